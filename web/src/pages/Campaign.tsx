import { useCallback, useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import type { AlignedData } from "uplot";
import { ApiError, download, gql, subscribe } from "../api";
import type {
  CampaignEventsSubscription, CampaignQuery, CampaignQueryVariables, CampaignTableQuery, CampaignTableQueryVariables,
  CloneCampaignMutation, CloneCampaignMutationVariables, ExperimentQuery, ExperimentQueryVariables,
  QueueExperimentMutation, QueueExperimentMutationVariables,
} from "../generated/graphql";
import type { ExperimentState } from "../generated/schema";
import { CAMPAIGN, CAMPAIGN_CONTROL, CAMPAIGN_EVENTS, CAMPAIGN_TABLE, CLONE_CAMPAIGN, EXPERIMENT, QUEUE_EXPERIMENT } from "../ops";
import { lineOptions, scatterOptions, UPlot, VIRIDIS_CSS, type MapPoint } from "../plots";
import { Link, navigate } from "../router";
import { Empty, ErrorBox, fmt, fmtTime, Loading, NotFound, numbers, paramText, StateBadge, useAction } from "../ui";
import { ExperimentSummary } from "./Experiment";
import { Spectra } from "./Spectra";

type Campaign = NonNullable<CampaignQuery["campaign"]>;
type Node = Campaign["experiments"]["nodes"][number];

/** Loads the campaign with every page of its experiments. */
async function loadCampaign(id: string): Promise<{ c: Campaign; nodes: Node[] } | null> {
  const first = await gql<CampaignQuery, CampaignQueryVariables>(CAMPAIGN, { id, after: null });
  if (!first.campaign) return null;
  const nodes = [...first.campaign.experiments.nodes];
  let page = first.campaign.experiments.pageInfo;
  while (page.hasNextPage && page.endCursor) {
    const next = await gql<CampaignQuery, CampaignQueryVariables>(CAMPAIGN, { id, after: page.endCursor });
    if (!next.campaign) break;
    nodes.push(...next.campaign.experiments.nodes);
    page = next.campaign.experiments.pageInfo;
  }
  return { c: first.campaign, nodes };
}

/** Calls `f` at most once per `ms`, and once more after the last call. */
function useThrottled(f: () => void, ms: number): () => void {
  const last = useRef(0);
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const fn = useRef(f);
  fn.current = f;
  useEffect(() => () => {
    if (timer.current) clearTimeout(timer.current);
  }, []);
  return useCallback(() => {
    if (timer.current) return;
    const wait = Math.max(0, last.current + ms - Date.now());
    timer.current = setTimeout(() => {
      timer.current = null;
      last.current = Date.now();
      fn.current();
    }, wait);
  }, [ms]);
}

export function CampaignPage({ id }: { id: string }) {
  const [data, setData] = useState<{ c: Campaign; nodes: Node[] } | null>(null);
  const [missing, setMissing] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const eventCount = useRef(0);
  const [events, setEvents] = useState(0);
  const [live, setLive] = useState<"connecting" | "live" | "lost">("connecting");
  const [selected, setSelected] = useState<string | null>(null);
  const [tableTick, setTableTick] = useState(0);
  const gen = useRef(0);

  const refetch = useCallback(async () => {
    const g = ++gen.current;
    try {
      const r = await loadCampaign(id);
      if (g !== gen.current) return;
      if (!r) setMissing(true);
      else {
        setData(r);
        setError(null);
      }
    } catch (e) {
      if (g !== gen.current) return;
      if (e instanceof ApiError && e.code === "NOT_FOUND") setMissing(true);
      else setError(e);
    }
  }, [id]);
  const throttled = useThrottled(() => {
    setLive("live");
    setEvents(eventCount.current);
    void refetch();
    setTableTick((t) => t + 1);
  }, 500);

  useEffect(() => {
    void refetch();
    const stop = subscribe<CampaignEventsSubscription>(
      CAMPAIGN_EVENTS,
      { id },
      () => {
        // events arrive in bursts (every measurement is one): count them without re-rendering
        // and refetch at most every 500 ms
        eventCount.current += 1;
        throttled();
      },
      () => setLive("lost"),
    );
    // the subscription only reports events: call it live once the socket is up
    const t = setTimeout(() => setLive((l) => (l === "connecting" ? "live" : l)), 1500);
    return () => {
      clearTimeout(t);
      stop();
    };
  }, [id, refetch, throttled]);

  if (missing) return <NotFound what="campaign" />;
  if (!data) return error ? <ErrorBox error={error} title="Cannot load the campaign" /> : <Loading what="the campaign" />;
  const { c, nodes } = data;
  const sel = selected ?? c.bestExperimentId ?? [...nodes].reverse().find((n) => n.state === "COMPLETED")?.id ?? null;
  return (
    <>
      <p><Link to="/campaigns">← Campaigns</Link></p>
      <div className="titlebar">
        <h1 data-testid="campaign-name">{c.name}</h1>
        <StateBadge state={c.state} />
        <span className={`live ${live}`} data-testid="live" data-events={events} aria-live="polite">
          {live === "live" ? "● live" : live === "lost" ? "connection lost, retrying" : "connecting…"}
        </span>
      </div>
      <ErrorBox error={error} title="Update failed (showing the last data)" />
      <Summary c={c} nodes={nodes} />
      <Controls c={c} onChange={() => void refetch()} />
      <div className="grid2 plots">
        <section className="card">
          <h2>Sampled conditions</h2>
          <TCMap c={c} nodes={nodes} selected={sel} onPick={setSelected} />
        </section>
        <section className="card">
          <h2>Best so far</h2>
          <BestSoFar c={c} nodes={nodes} />
        </section>
      </div>
      <section className="card">
        <h2>Selected experiment</h2>
        {sel ? <Selected id={sel} state={nodes.find((n) => n.id === sel)?.state} /> : <Empty>No experiment has finished yet; points appear on the map as they arrive.</Empty>}
      </section>
      <div className="grid2">
        <section className="card">
          <h2>Queue</h2>
          <Queue nodes={nodes} />
        </section>
        {c.canControl && (
          <section className="card">
            <h2>Queue your own conditions</h2>
            <ManualExperiment c={c} onQueued={() => void refetch()} />
          </section>
        )}
      </div>
      <section className="card">
        <h2>Data</h2>
        <DataTable c={c} tick={tableTick} onSelect={setSelected} />
      </section>
    </>
  );
}

function Summary({ c, nodes }: { c: Campaign; nodes: Node[] }) {
  const done = nodes.filter((n) => n.state === "COMPLETED").length;
  return (
    <dl className="facts">
      <div><dt>Objective</dt><dd data-testid="objective" data-direction={c.objectiveDirection}><code>{c.objective}</code> ({c.objectiveDirection === "MINIMIZE" ? "smaller is better" : "larger is better"})</dd></div>
      <div><dt>Optimizer</dt><dd>{c.optimizer} (seed {c.seed}, batch {c.batchSize})</dd></div>
      <div><dt>Progress</dt><dd data-testid="progress">{c.results} / {c.budget} told · {done} completed · {c.proposals} proposed</dd></div>
      <div><dt>Best</dt><dd data-testid="best">{fmt(c.bestValue, 4)}{c.bestParameters ? ` at ${paramText(c.bestParameters)}` : ""}</dd></div>
      <div><dt>Space</dt><dd>{c.parameters.map((p) => `${p.name} ∈ [${p.lower}, ${p.upper}]${p.step ? ` step ${p.step}` : ""}`).join(", ")}</dd></div>
      <div><dt>Started</dt><dd>{fmtTime(c.startedAt)}{c.finishedAt ? ` · finished ${fmtTime(c.finishedAt)}` : ""}</dd></div>
      {c.stateDetail && <div><dt>State</dt><dd>{c.stateDetail}</dd></div>}
    </dl>
  );
}

function Controls({ c, onChange }: { c: Campaign; onChange: () => void }) {
  const a = useAction();
  if (!c.canControl) {
    return <p className="muted" data-testid="read-only">You can follow this campaign but not control it (your role is read-only here).</p>;
  }
  const act = (k: keyof typeof CAMPAIGN_CONTROL) =>
    void a.run(async () => {
      await gql(CAMPAIGN_CONTROL[k], { id: c.id });
      onChange();
    });
  const clone = () =>
    void a.run(async () => {
      const r = await gql<CloneCampaignMutation, CloneCampaignMutationVariables>(CLONE_CAMPAIGN, { id: c.id, name: `${c.name} (copy)` });
      navigate(`/campaigns/${r.cloneCampaign.id}`);
    });
  const s = c.state;
  return (
    <div className="controls" role="group" aria-label="Campaign controls">
      {s === "DRAFT" && <button type="button" className="primary" onClick={() => act("start")} disabled={a.busy}>Start</button>}
      {s === "RUNNING" && <button type="button" onClick={() => act("pause")} disabled={a.busy}>Pause</button>}
      {s === "PAUSED" && <button type="button" className="primary" onClick={() => act("resume")} disabled={a.busy}>Resume</button>}
      {(s === "DRAFT" || s === "RUNNING" || s === "PAUSED") && <button type="button" className="danger" onClick={() => act("cancel")} disabled={a.busy}>Cancel campaign</button>}
      <button type="button" onClick={clone} disabled={a.busy}>Clone</button>
      <ErrorBox error={a.error} title="The campaign did not change" />
    </div>
  );
}

function TCMap({ c, nodes, selected, onPick }: { c: Campaign; nodes: Node[]; selected: string | null; onPick: (id: string) => void }) {
  const [px, py] = c.parameters;
  const points = useMemo<MapPoint[]>(() => {
    if (!px) return [];
    return nodes
      .map((n) => {
        const p = numbers(n.parameters);
        const x = p[px.name];
        const y = py ? p[py.name] : (n.objectiveValue ?? NaN);
        return { id: n.id, x, y, value: n.objectiveValue ?? null, seq: n.seq, name: n.name };
      })
      .filter((q) => Number.isFinite(q.x) && Number.isFinite(q.y))
      .sort((a, b) => a.x - b.x);
  }, [nodes, px, py]);
  const ref = useRef({ points, selected, onPick });
  ref.current = { points, selected, onPick };
  const options = useMemo(
    () =>
      px
        ? scatterOptions({
            xLabel: px.name, yLabel: py ? py.name : "objective",
            xRange: [px.lower, px.upper], yRange: py ? [py.lower, py.upper] : [0, 1],
            points: () => ref.current.points, selected: () => ref.current.selected, onPick: (id) => ref.current.onPick(id),
          })
        : null,
    [px, py],
  );
  const data = useMemo<AlignedData>(() => [points.map((q) => q.x), points.map((q) => q.y)], [points]);
  if (!options) return <Empty>The recipe declares no variables.</Empty>;
  const vals = points.map((q) => (q.value === null ? NaN : Math.abs(q.value))).filter(Number.isFinite);
  const measured = vals.length;
  return (
    <>
      <UPlot options={options} data={data} height={340} label={`${points.length} sampled points on the (${px.name}, ${py?.name ?? "objective"}) plane, ${measured} measured, coloured by |objective|`} testid="tc-map" extra={{ points: points.length, measured }} />
      <div className="colorbar" aria-hidden={measured === 0}>
        <span>{measured ? fmt(Math.min(...vals)) : "—"}</span>
        <span className="bar" style={{ background: VIRIDIS_CSS }} />
        <span>{measured ? fmt(Math.max(...vals)) : "—"}</span>
        <span className="muted"> |objective| · hollow = not measured yet · click a point to select it · drag to zoom, double-click to reset</span>
      </div>
    </>
  );
}

function BestSoFar({ c, nodes }: { c: Campaign; nodes: Node[] }) {
  const minimize = c.objectiveDirection === "MINIMIZE";
  const data = useMemo<AlignedData>(() => {
    const done = nodes.filter((n) => typeof n.objectiveValue === "number").sort((a, b) => a.seq - b.seq);
    let best: number | null = null;
    const xs: number[] = [];
    const vs: number[] = [];
    const bs: number[] = [];
    for (const n of done) {
      const v = n.objectiveValue as number;
      best = best === null ? v : minimize ? Math.min(best, v) : Math.max(best, v);
      xs.push(n.seq);
      vs.push(v);
      bs.push(best);
    }
    return [xs, vs, bs];
  }, [nodes, minimize]);
  const options = useMemo(
    () => lineOptions({ xLabel: "loop", yLabel: "objective", series: [{ label: "value", color: "#9aa5b1", points: true, line: false }, { label: "best so far", color: "#d62728" }] }),
    [],
  );
  if (data[0].length === 0) return <Empty>No results yet.</Empty>;
  const best = data[2][data[2].length - 1];
  return <UPlot options={options} data={data} height={340} label={`Best objective so far against loop (${minimize ? "smallest" : "largest"} value), ${data[0].length} results`} testid="best-plot" extra={{ points: data[0].length, best: best ?? "", direction: c.objectiveDirection }} />;
}

function Selected({ id, state }: { id: string; state: ExperimentState | undefined }) {
  const [e, setE] = useState<NonNullable<ExperimentQuery["experiment"]> | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let stale = false;
    gql<ExperimentQuery, ExperimentQueryVariables>(EXPERIMENT, { id })
      .then((r) => !stale && (setE(r.experiment ?? null), setError(null)))
      .catch((err) => !stale && setError(err));
    return () => {
      stale = true;
    };
  }, [id, state]);
  if (error) return <ErrorBox error={error} />;
  if (!e || e.id !== id) return <Loading what="the experiment" />;
  return (
    <div data-testid="selected-experiment" data-id={e.id}>
      <h3>
        <Link to={`/experiments/${e.id}`}>Experiment {e.seq}: {e.name}</Link> <StateBadge state={e.state} />
      </h3>
      <ExperimentSummary e={e} />
      <Spectra e={e} />
    </div>
  );
}

const ACTIVE: ExperimentState[] = ["QUEUED", "LEASED", "RUNNING"];

function Queue({ nodes }: { nodes: Node[] }) {
  const q = nodes.filter((n) => ACTIVE.includes(n.state));
  if (q.length === 0) return <Empty>Nothing queued or running.</Empty>;
  return (
    <ol className="queue" data-testid="queue">
      {q.map((n) => (
        <li key={n.id}><StateBadge state={n.state} /> #{n.seq} {n.name} <span className="muted">{paramText(n.parameters)} · {n.source}</span></li>
      ))}
    </ol>
  );
}

function ManualExperiment({ c, onQueued }: { c: Campaign; onQueued: () => void }) {
  const [vals, setVals] = useState<Record<string, string>>({});
  const [name, setName] = useState("");
  const a = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const parameters: Record<string, number> = {};
      for (const p of c.parameters) parameters[p.name] = Number(vals[p.name] ?? (p.lower + p.upper) / 2);
      await gql<QueueExperimentMutation, QueueExperimentMutationVariables>(QUEUE_EXPERIMENT, { campaign: c.id, parameters, name: name || null });
      setName("");
      onQueued();
    });
  };
  return (
    <form onSubmit={submit} className="row">
      {c.parameters.map((p) => (
        <label key={p.name}>
          {p.name} <small>({p.lower}–{p.upper})</small>
          <input type="number" step={p.step ?? "any"} min={p.lower} max={p.upper} required value={vals[p.name] ?? ""} onChange={(e) => setVals({ ...vals, [p.name]: e.target.value })} />
        </label>
      ))}
      <label>
        Name <small>(optional)</small>
        <input value={name} onChange={(e) => setName(e.target.value)} />
      </label>
      <button type="submit" disabled={a.busy}>Queue experiment</button>
      <ErrorBox error={a.error} title="Not queued" />
    </form>
  );
}

const STATES: ExperimentState[] = ["QUEUED", "LEASED", "RUNNING", "COMPLETED", "FAILED", "INTERRUPTED", "CANCELED"];

function DataTable({ c, tick, onSelect }: { c: Campaign; tick: number; onSelect: (id: string) => void }) {
  const [state, setState] = useState<ExperimentState | "">("");
  const [source, setSource] = useState("");
  const [pages, setPages] = useState(1);
  const [more, setMore] = useState<{ nodes: NonNullable<CampaignTableQuery["campaign"]>["experiments"]["nodes"]; next: boolean; total: number } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const exp = useAction();
  useEffect(() => {
    let stale = false;
    (async () => {
      let after: string | null = null;
      const all: NonNullable<CampaignTableQuery["campaign"]>["experiments"]["nodes"] = [];
      let next = false;
      let total = 0;
      for (let i = 0; i < pages; i++) {
        const r: CampaignTableQuery = await gql<CampaignTableQuery, CampaignTableQueryVariables>(CAMPAIGN_TABLE, { id: c.id, state: state || null, source: source || null, after });
        const page = r.campaign?.experiments;
        if (!page) break;
        all.push(...page.nodes);
        total = page.totalCount;
        next = page.pageInfo.hasNextPage;
        after = page.pageInfo.endCursor ?? null;
        if (!next) break;
        if (stale) return;
      }
      if (!stale) {
        setMore({ nodes: all, next, total });
        setError(null);
      }
    })().catch((e) => !stale && setError(e));
    return () => {
      stale = true;
    };
  }, [c.id, state, source, pages, tick]);
  const names = c.parameters.map((p) => p.name);
  const exportAs = (fmtName: "csv" | "json") =>
    void exp.run(() => download(`/api/v1/campaigns/${encodeURIComponent(c.id)}/export.${fmtName}`, `campaign-${c.id}.${fmtName}`));
  return (
    <>
      <div className="row filters">
        <label>
          State
          <select value={state} onChange={(e) => { setState(STATES.find((s) => s === e.target.value) ?? ""); setPages(1); }} data-testid="filter-state">
            <option value="">all</option>
            {STATES.map((s) => <option key={s} value={s}>{s.toLowerCase()}</option>)}
          </select>
        </label>
        <label>
          Source
          <select value={source} onChange={(e) => { setSource(e.target.value); setPages(1); }} data-testid="filter-source">
            <option value="">all</option>
            <option value="optimizer">optimizer</option>
            <option value="manual">manual</option>
          </select>
        </label>
        <span className="spacer" />
        <button type="button" onClick={() => exportAs("csv")} disabled={exp.busy}>Export CSV</button>
        <button type="button" onClick={() => exportAs("json")} disabled={exp.busy}>Export JSON</button>
      </div>
      <ErrorBox error={exp.error} title="Export failed" />
      <ErrorBox error={error} />
      {!more && !error && <Loading what="experiments" />}
      {more && more.nodes.length === 0 && <Empty>No experiments match these filters.</Empty>}
      {more && more.nodes.length > 0 && (
        <div className="scroll">
          <table className="compact" data-testid="data-table" data-total={more.total}>
            <thead>
              <tr><th>#</th><th>Name</th><th>State</th><th>Source</th>{names.map((n) => <th key={n}>{n}</th>)}<th>Objective</th><th>Finished</th><th><span className="sr-only">Actions</span></th></tr>
            </thead>
            <tbody>
              {more.nodes.map((n) => {
                const p = numbers(n.parameters);
                return (
                  <tr key={n.id} data-state={n.state}>
                    <td>{n.seq}</td>
                    <td className="name">{n.name}</td>
                    <td><StateBadge state={n.state} /></td>
                    <td>{n.source}</td>
                    {names.map((k) => <td key={k}>{fmt(p[k], 4)}</td>)}
                    <td>{fmt(n.objectiveValue, 4)}</td>
                    <td>{fmtTime(n.finishedAt)}</td>
                    <td>
                      <button type="button" className="small" onClick={() => { onSelect(n.id); document.querySelector('[data-testid="selected-experiment"]')?.scrollIntoView({ block: "start" }); }}>Show</button>{" "}
                      <Link to={`/experiments/${n.id}`}>Open</Link>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {more?.next && <button type="button" onClick={() => setPages(pages + 1)}>Load more</button>}
    </>
  );
}
