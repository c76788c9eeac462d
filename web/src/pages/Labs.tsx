import { useEffect, useMemo, useState, type FormEvent } from "react";
import { gql, subscribe } from "../api";
import { useApp, useRole } from "../App";
import type {
  CreateLabMutation, CreateLabMutationVariables, EnrollmentTokenMutation, EnrollmentTokenMutationVariables, LabQuery,
  LabQueryVariables, LabsQuery, LabStatusSubscription, LabTelemetryQuery, LabTelemetryQueryVariables,
  ResetLabFaultsMutation, ResetLabFaultsMutationVariables, SendInstructionMutation, SendInstructionMutationVariables,
  StopLabMutation, StopLabMutationVariables,
} from "../generated/graphql";
import {
  CREATE_LAB, ENROLLMENT_TOKEN, LAB, LAB_STATUS, LAB_TELEMETRY, LABS, RESET_LAB_FAULTS, SEND_INSTRUCTION, STOP_LAB,
} from "../ops";
import { lineOptions, UPlot } from "../plots";
import { Link, navigate } from "../router";
import { CopyField, Empty, ErrorBox, fmt, fmtTime, Loading, NotFound, Online, useAction, useQuery } from "../ui";

export function LabsPage() {
  const { orgId } = useApp();
  const role = useRole();
  const q = useQuery<LabsQuery, Record<string, never>>(LABS, {}, []);
  const [name, setName] = useState("");
  const a = useAction();
  const create = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<CreateLabMutation, CreateLabMutationVariables>(CREATE_LAB, { org: orgId, name });
      navigate(`/labs/${r.createLab.id}`);
    });
  };
  return (
    <>
      <h1>Labs</h1>
      {(role === "OWNER" || role === "ADMIN") && (
        <form onSubmit={create} className="card row">
          <label>
            New lab name
            <input required value={name} onChange={(e) => setName(e.target.value)} placeholder="paper-lab" />
          </label>
          <button type="submit" className="primary" disabled={a.busy}>Create lab</button>
          <ErrorBox error={a.error} title="Cannot create the lab" />
        </form>
      )}
      {q.loading && <Loading what="labs" />}
      <ErrorBox error={q.error} />
      {q.data && q.data.labs.length === 0 && <Empty>No labs yet. An owner or admin creates one, then enrolls its agent.</Empty>}
      {q.data && q.data.labs.length > 0 && (
        <table data-testid="labs-table">
          <thead><tr><th>Lab</th><th>Status</th><th>Devices</th><th>Agent</th><th>Last seen</th><th>Access</th></tr></thead>
          <tbody>
            {q.data.labs.map((l) => (
              <tr key={l.id}>
                <td><Link to={`/labs/${l.id}`}>{l.name}</Link>{l.organizationId !== orgId && <span className="muted"> (shared)</span>}</td>
                <td><Online online={l.online} /></td>
                <td>{l.devices.length}</td>
                <td>{l.agentVersion ?? "—"}</td>
                <td>{fmtTime(l.lastSeenAt)}</td>
                <td>{l.canManage ? "manage" : l.canQueue ? "queue" : "read"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

type LabDevice = NonNullable<LabQuery["lab"]>["devices"][number];
type Method = LabDevice["methods"][number];
type Telemetry = NonNullable<LabTelemetryQuery["lab"]>["telemetry"];

/** How often the lab page asks for live readings while it is visible (the server caches ~1 s). */
const TELEMETRY_POLL_MS = 2000;
/** Temperature samples kept for the trend plot (5 minutes at one every 2 s). */
const TREND_SAMPLES = 150;

export function LabPage({ id }: { id: string }) {
  const q = useQuery<LabQuery, LabQueryVariables>(LAB, { id }, [id]);
  const [online, setOnline] = useState<boolean | null>(null);
  const [live, setLive] = useState(false);
  useEffect(() => {
    const stop = subscribe<LabStatusSubscription>(LAB_STATUS, { lab: id }, (d) => {
      setOnline(d.labStatus.online);
      void q.reload();
    });
    setLive(true);
    return () => {
      stop();
      setLive(false);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [id]);
  if (q.loading && !q.data) return <Loading what="the lab" />;
  if (q.error && !q.data) return <ErrorBox error={q.error} title="Cannot load the lab" />;
  const lab = q.data?.lab;
  if (!lab) return <NotFound what="lab" />;
  const isOnline = online ?? lab.online;
  return (
    <>
      <p><Link to="/labs">← Labs</Link></p>
      <h1>
        {lab.name} <Online online={isOnline} />
      </h1>
      <p className="muted">
        {live ? "Live status" : "Status"} · agent {lab.agentVersion ?? "never connected"} · last seen {fmtTime(lab.lastSeenAt)} · connection #{lab.connectionGeneration}
      </p>
      <div className="grid2">
        <section className="card">
          <h2>Devices</h2>
          {lab.devices.length === 0 ? (
            <Empty>No devices yet: they appear when the lab's agent connects.</Empty>
          ) : (
            <table data-testid="devices">
              <thead><tr><th>Symbol</th><th>Kind</th><th>Methods</th></tr></thead>
              <tbody>
                {lab.devices.map((d) => (
                  <tr key={d.name} title={d.description || undefined}><td><code>{d.name}</code></td><td>{d.kind}</td><td>{d.methods.map((m) => m.name).join(", ") || "—"}</td></tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
        <section className="card">
          <h2>Live readings</h2>
          <LiveReadings labId={lab.id} />
        </section>
        {lab.canManage && (
          <section className="card">
            <h2>Enroll an agent</h2>
            <Enroll labId={lab.id} />
            {lab.agentCredentials.length > 0 && (
              <>
                <h3>Agent credentials</h3>
                <ul>
                  {lab.agentCredentials.map((c) => (
                    <li key={c.id}><code>{c.id}</code> created {fmtTime(c.createdAt)}{c.revokedAt ? `, revoked ${fmtTime(c.revokedAt)}` : ""}</li>
                  ))}
                </ul>
              </>
            )}
          </section>
        )}
      </div>
      {lab.canInstruct && (
        <div className="grid2">
          <section className="card">
            <h2>Instruction console</h2>
            <Console labId={lab.id} devices={lab.devices} online={isOnline} />
          </section>
          <section className="card">
            <h2>Software stop</h2>
            <Stop labId={lab.id} online={isOnline} />
            {lab.canManage && <ResetFaults labId={lab.id} online={isOnline} />}
          </section>
        </div>
      )}
    </>
  );
}

type Fault = { kind: string; detail: string; lab_time_s: number };

/** The operator fault reset (owners and admins): clears the lab's latched safety faults. */
function ResetFaults({ labId, online }: { labId: string; online: boolean }) {
  const [reason, setReason] = useState("");
  const [result, setResult] = useState<{ cleared: Fault[]; latched: Fault[] } | null>(null);
  const a = useAction();
  const reset = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<ResetLabFaultsMutation, ResetLabFaultsMutationVariables>(RESET_LAB_FAULTS, { lab: labId, reason });
      setResult(r.resetLabFaults as { cleared: Fault[]; latched: Fault[] });
      setReason("");
    });
  };
  const kinds = (fs: Fault[]) => fs.map((f) => f.kind.replace(/_/g, " ")).join(", ");
  return (
    <form onSubmit={reset}>
      <h3>Fault reset</h3>
      <p>
        A software stop, an over-temperature or a lost device latches a fault: the lab refuses instructions and programs
        until it is reset. The reset restarts nothing, and a fault whose cause persists latches again. It is audited with
        your reason.
      </p>
      <label>
        Reason
        <input value={reason} onChange={(e) => setReason(e.target.value)} maxLength={500} data-testid="reset-reason" />
      </label>
      <button type="submit" disabled={a.busy || !online || reason.trim() === ""}>
        {a.busy ? "Resetting…" : "Reset faults"}
      </button>
      <ErrorBox error={a.error} title="Reset failed" />
      {result && (
        <p role="status" data-testid="reset-result">
          Cleared {result.cleared.length} fault(s){result.cleared.length > 0 && ` (${kinds(result.cleared)})`}
          {result.latched.length > 0 ? `; latched again, the cause persists: ${kinds(result.latched)}` : "; no fault is latched"}
        </p>
      )}
    </form>
  );
}

function Enroll({ labId }: { labId: string }) {
  const [tok, setTok] = useState<{ token: string; expiresAt: string } | null>(null);
  const a = useAction();
  const create = () =>
    void a.run(async () => {
      const r = await gql<EnrollmentTokenMutation, EnrollmentTokenMutationVariables>(ENROLLMENT_TOKEN, { lab: labId });
      setTok(r.createEnrollmentToken);
    });
  return (
    <>
      <p>An enrollment token works once; the agent exchanges it for its own credential.</p>
      <button type="button" onClick={create} disabled={a.busy}>Create enrollment token</button>
      <ErrorBox error={a.error} />
      {tok && (
        <div className="secret" data-testid="enrollment">
          <CopyField label="Enrollment token (shown once)" value={tok.token} testid="enrollment-token" />
          <p>Expires {fmtTime(tok.expiresAt)}. On the lab's computer run:</p>
          <pre data-testid="enroll-command">{`maosic-agent enroll --server ${location.origin} --token ${tok.token} --credential-out credential.json
maosic-agent run --server ${location.origin} --credential credential.json --lab lab.toml`}</pre>
        </div>
      )}
    </>
  );
}

/** Polls `Lab.telemetry` every 2 s while the page is visible: each heater's temperature (process
 * value against setpoint, with a trend since the page opened) and each pump's flow. */
function LiveReadings({ labId }: { labId: string }) {
  const [t, setT] = useState<Telemetry | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [trend, setTrend] = useState<{ at: number[]; pv: (number | null)[]; sp: number[] }>({ at: [], pv: [], sp: [] });
  useEffect(() => {
    let stopped = false;
    let busy = false;
    let timer: number | undefined;
    const t0 = Date.now();
    setT(null);
    setError(null);
    setTrend({ at: [], pv: [], sp: [] });
    const tick = async () => {
      window.clearTimeout(timer);
      if (busy || stopped) return;
      if (document.visibilityState === "visible") {
        busy = true;
        try {
          const d = await gql<LabTelemetryQuery, LabTelemetryQueryVariables>(LAB_TELEMETRY, { id: labId });
          if (stopped) return;
          const next = d.lab?.telemetry ?? null;
          setT(next);
          setError(null);
          const h = next?.heaters[0];
          if (h && h.source === "AGENT") {
            const at = (Date.parse(h.at) - t0) / 1000;
            setTrend((old) => (old.at.length && old.at[old.at.length - 1] >= at ? old : {
              at: [...old.at, at].slice(-TREND_SAMPLES),
              pv: [...old.pv, h.pvC ?? null].slice(-TREND_SAMPLES),
              sp: [...old.sp, h.setpointC].slice(-TREND_SAMPLES),
            }));
          }
        } catch (e) {
          if (!stopped) setError(e);
        } finally {
          busy = false;
        }
      }
      if (!stopped) timer = window.setTimeout(() => void tick(), TELEMETRY_POLL_MS);
    };
    const onVisibility = () => {
      if (document.visibilityState === "visible") void tick();
    };
    document.addEventListener("visibilitychange", onVisibility);
    void tick();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    };
  }, [labId]);
  const trendOpts = useMemo(
    () => lineOptions({
      xLabel: "s since opened", yLabel: "°C",
      series: [{ label: "process value", color: "#d62728" }, { label: "setpoint", color: "#1f77b4", dash: [6, 4] }],
    }),
    [],
  );
  if (!t && !error) return <Loading what="live readings" />;
  if (!t) return <ErrorBox error={error} title="Cannot read the lab" />;
  if (t.state === "RESTRICTED") return <Empty>Live readings of a shared lab are visible to its own organisation only.</Empty>;
  return (
    <div data-testid="telemetry" data-state={t.state}>
      <p className="muted">
        <span className={`badge ${STATE_CLASS[t.state]}`} data-testid="telemetry-state">{STATE_TEXT[t.state]}</span>{" "}
        read {fmtTime(t.readAt)}{t.detail ? ` · ${t.detail}` : ""}
      </p>
      <ErrorBox error={error} title="Live readings stopped updating" />
      {t.heaters.length === 0 && t.pumps.length === 0 && (
        <Empty>{t.state === "OFFLINE" ? "No readings: the agent is offline and no temperature has been stored yet." : "This lab reports no heater or pump readings."}</Empty>
      )}
      {t.heaters.map((h) => (
        <p key={h.device} className="reading" data-testid={`temperature-${h.device}`} data-pv={h.pvC ?? ""} data-sp={h.setpointC}>
          <code>{h.device}</code> <strong className="big">{h.pvC === null || h.pvC === undefined ? "sensor error" : `${h.pvC.toFixed(1)} °C`}</strong>
          {" "}/ setpoint {h.setpointC.toFixed(1)} °C · output {fmt(h.outputPct, 2)} %
          {h.enabled === false ? " · heater off" : ""}
          {h.source === "RECORD" && <span className="muted"> · last stored measurement, {fmtTime(h.at)}</span>}
        </p>
      ))}
      {t.heaters.length > 0 && trend.at.length > 1 && (
        <UPlot options={trendOpts} data={[trend.at, trend.pv, trend.sp]} height={160} label="Reactor temperature since the page opened" testid="temperature-trend" />
      )}
      {t.pumps.length > 0 && (
        <table data-testid="pumps">
          <thead><tr><th>Pump</th><th>State</th><th>Flow (µL/min)</th><th>Rate set</th><th>Infused (µL)</th></tr></thead>
          <tbody>
            {t.pumps.map((p) => (
              <tr key={p.device} data-testid={`pump-${p.device}`} data-flow={p.flowUlMin}>
                <td><code>{p.device}</code></td>
                <td>{p.state}{p.alarm ? ` (${p.alarm})` : ""}</td>
                <td>{fmt(p.flowUlMin, 3)}</td>
                <td>{fmt(p.rateUlMin, 3)}</td>
                <td>{fmt(p.infusedUl, 3)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

const STATE_TEXT: Record<Telemetry["state"], string> = {
  LIVE: "live", PARTIAL: "partly live", OFFLINE: "agent offline", RESTRICTED: "restricted",
};
const STATE_CLASS: Record<Telemetry["state"], string> = {
  LIVE: "online", PARTIAL: "state-paused", OFFLINE: "offline", RESTRICTED: "",
};

function paramHint(m: Method): string {
  return m.params
    .map((p) => `${p.name}${p.required && p.default == null ? "" : "?"} [${p.min}–${p.max}${p.unit ? " " + p.unit : ""}${p.step ? `, step ${p.step}` : ""}${p.default != null ? `, default ${p.default}` : ""}]`)
    .join(", ");
}

function Console({ labId, devices, online }: { labId: string; devices: LabDevice[]; online: boolean }) {
  const options = useMemo(
    () => devices.flatMap((d) => d.methods.map((m) => ({ value: `${d.name}.${m.name}`, method: m }))),
    [devices],
  );
  const [method, setMethod] = useState("");
  const chosen = options.find((o) => o.value === method) ?? options[0];
  const [params, setParams] = useState("{}");
  const [log, setLog] = useState<{ at: string; method: string; ok: boolean; text: string }[]>([]);
  const a = useAction();
  const pick = (v: string) => {
    setMethod(v);
    const o = options.find((x) => x.value === v);
    const init: Record<string, number> = {};
    for (const p of o?.method.params ?? []) if (p.required) init[p.name] = p.default ?? p.min;
    setParams(JSON.stringify(init));
  };
  const send = (e: FormEvent) => {
    e.preventDefault();
    if (!chosen) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(params || "{}");
    } catch {
      a.setError(new Error("Parameters must be a JSON object, e.g. {\"T\": 25}"));
      return;
    }
    void a.run(async () => {
      const at = new Date().toLocaleTimeString();
      try {
        const r = await gql<SendInstructionMutation, SendInstructionMutationVariables>(SEND_INSTRUCTION, { lab: labId, method: chosen.value, params: parsed });
        setLog((l) => [{ at, method: chosen.value, ok: true, text: JSON.stringify(r.sendInstruction) }, ...l].slice(0, 20));
      } catch (err) {
        setLog((l) => [{ at, method: chosen.value, ok: false, text: err instanceof Error ? err.message : String(err) }, ...l].slice(0, 20));
      }
    });
  };
  if (options.length === 0) return <Empty>The console lists the methods of the lab's capability descriptor once its agent has connected.</Empty>;
  return (
    <form onSubmit={send}>
      <label>
        Method
        <select value={chosen?.value} onChange={(e) => pick(e.target.value)} data-testid="console-method">
          {options.map((o) => <option key={o.value} value={o.value}>{o.value}</option>)}
        </select>
      </label>
      {chosen && (
        <p className="muted" data-testid="console-method-help">
          {chosen.method.description}
          {chosen.method.params.length > 0 && ": " + paramHint(chosen.method)}
        </p>
      )}
      <label>
        Parameters (JSON)
        <input value={params} onChange={(e) => setParams(e.target.value)} className="mono" data-testid="console-params" />
      </label>
      <button type="submit" disabled={a.busy || !online} title={online ? undefined : "The lab is offline"}>
        {a.busy ? "Sending…" : "Send"}
      </button>
      <ErrorBox error={a.error} />
      {log.length > 0 && (
        <ol className="console-log" data-testid="console-log" aria-live="polite">
          {log.map((l, i) => (
            <li key={i} className={l.ok ? "ok" : "bad"}>
              <span className="muted">{l.at}</span> <code>{l.method}</code> {l.ok ? "→" : "✗"} <code>{l.text}</code>
            </li>
          ))}
        </ol>
      )}
    </form>
  );
}

function Stop({ labId, online }: { labId: string; online: boolean }) {
  const [armed, setArmed] = useState(false);
  const [result, setResult] = useState<string | null>(null);
  const a = useAction();
  const stop = () =>
    void a.run(async () => {
      const r = await gql<StopLabMutation, StopLabMutationVariables>(STOP_LAB, { lab: labId });
      setResult(JSON.stringify(r.stopLab));
      setArmed(false);
    });
  return (
    <>
      <p>Cancels the lab's running programs and puts the hardware in its safe state (pumps stopped, heater off). The hardware e-stop stays the lab's.</p>
      {!armed ? (
        <button type="button" className="danger" onClick={() => setArmed(true)} disabled={!online}>Stop lab…</button>
      ) : (
        <>
          <button type="button" className="danger" onClick={stop} disabled={a.busy}>Confirm software stop</button>{" "}
          <button type="button" onClick={() => setArmed(false)}>Keep running</button>
        </>
      )}
      <ErrorBox error={a.error} title="Stop failed" />
      {result && <p role="status">Stopped: <code>{result}</code></p>}
    </>
  );
}
