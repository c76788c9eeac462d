import { useEffect, useMemo, useState, type FormEvent } from "react";
import { gql, subscribe } from "../api";
import { useApp, useRole } from "../App";
import type {
  CreateLabMutation, CreateLabMutationVariables, EnrollmentTokenMutation, EnrollmentTokenMutationVariables, LabQuery,
  LabQueryVariables, LabsQuery, LabStatusSubscription, SendInstructionMutation, SendInstructionMutationVariables,
  StopLabMutation, StopLabMutationVariables,
} from "../generated/graphql";
import methodsByKind from "../methods.json";
import { CREATE_LAB, ENROLLMENT_TOKEN, LAB, LAB_STATUS, LABS, SEND_INSTRUCTION, STOP_LAB } from "../ops";
import { Link, navigate } from "../router";
import { CopyField, Empty, ErrorBox, fmtTime, Loading, NotFound, Online, useAction, useQuery } from "../ui";

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

type Param = { name: string; unit?: string; min?: number; max?: number; required?: boolean; default?: number };
type Method = { name: string; description: string; params: Param[] };
const METHODS = methodsByKind as Record<string, Method[]>;

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
                  <tr key={d.name}><td><code>{d.name}</code></td><td>{d.kind}</td><td>{(METHODS[d.kind] ?? []).map((m) => m.name).join(", ") || "—"}</td></tr>
                ))}
              </tbody>
            </table>
          )}
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
      {lab.canQueue && (
        <div className="grid2">
          <section className="card">
            <h2>Instruction console</h2>
            <Console labId={lab.id} devices={lab.devices} online={isOnline} />
          </section>
          <section className="card">
            <h2>Software stop</h2>
            <Stop labId={lab.id} online={isOnline} />
          </section>
        </div>
      )}
    </>
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

function Console({ labId, devices, online }: { labId: string; devices: { name: string; kind: string }[]; online: boolean }) {
  const options = useMemo(
    () => devices.flatMap((d) => (METHODS[d.kind] ?? []).map((m) => ({ value: `${d.name}.${m.name}`, method: m }))),
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
    for (const p of o?.method.params ?? []) if (p.required) init[p.name] = p.default ?? p.min ?? 0;
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
  if (options.length === 0) return <Empty>The console lists the lab's methods once its agent has connected.</Empty>;
  return (
    <form onSubmit={send}>
      <label>
        Method
        <select value={chosen?.value} onChange={(e) => pick(e.target.value)} data-testid="console-method">
          {options.map((o) => <option key={o.value} value={o.value}>{o.value}</option>)}
        </select>
      </label>
      {chosen && (
        <p className="muted">
          {chosen.method.description}
          {chosen.method.params.length > 0 && ": " + chosen.method.params.map((p) => `${p.name}${p.required ? "" : "?"} [${p.unit ?? ""} ${p.min ?? ""}–${p.max ?? ""}]`).join(", ")}
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
