import { useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import { ApiError, gql } from "../api";
import { useApp, useRole } from "../App";
import type {
  CampaignsQuery, CampaignsQueryVariables, CompileQuery, CompileQueryVariables, CreateCampaignMutation,
  CreateCampaignMutationVariables, LabsQuery,
} from "../generated/graphql";
import { CAMPAIGNS, COMPILE, CREATE_CAMPAIGN, LABS } from "../ops";
import { midpoints, parseSpace } from "../recipe";
import { Link, navigate } from "../router";
import { Empty, ErrorBox, fmt, fmtTime, Loading, StateBadge, useAction, useQuery } from "../ui";
import exampleRecipe from "../../../examples/chirality.recipe?raw";

export function CampaignsPage() {
  const { orgId } = useApp();
  const role = useRole();
  const q = useQuery<CampaignsQuery, CampaignsQueryVariables>(CAMPAIGNS, { org: orgId }, [orgId], !orgId);
  return (
    <>
      <div className="titlebar">
        <h1>Campaigns</h1>
        {role !== "VIEWER" && <Link to="/campaigns/new" className="button primary">New campaign</Link>}
      </div>
      {q.loading && <Loading what="campaigns" />}
      <ErrorBox error={q.error} />
      {q.data && q.data.campaigns.length === 0 && (
        <Empty>No campaigns in this organisation yet.{role !== "VIEWER" && <> <Link to="/campaigns/new">Create the first one</Link>.</>}</Empty>
      )}
      {q.data && q.data.campaigns.length > 0 && (
        <table data-testid="campaigns-table">
          <thead><tr><th>Name</th><th>State</th><th>Objective</th><th>Optimizer</th><th>Progress</th><th>Best</th><th>Created</th></tr></thead>
          <tbody>
            {q.data.campaigns.map((c) => (
              <tr key={c.id}>
                <td><Link to={`/campaigns/${c.id}`}>{c.name}</Link></td>
                <td><StateBadge state={c.state} /></td>
                <td><code>{c.objective}</code></td>
                <td>{c.optimizer}</td>
                <td>{c.results} / {c.budget}</td>
                <td>{fmt(c.bestValue)}</td>
                <td>{fmtTime(c.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

type Diag = CompileQuery["compileRecipe"]["diagnostics"][number];
const OPTIMIZERS = [
  ["snobfit", "SNOBFIT (the paper's)"],
  ["bo", "Bayesian optimisation (GP)"],
  ["sobol", "Sobol sequence"],
  ["random", "Random"],
  ["grid", "Grid"],
] as const;

export function NewCampaignPage() {
  const { orgId } = useApp();
  const labs = useQuery<LabsQuery, Record<string, never>>(LABS, {}, []);
  const queueable = (labs.data?.labs ?? []).filter((l) => l.canQueue);
  const [labId, setLabId] = useState("");
  const lab = queueable.find((l) => l.id === labId) ?? queueable[0];
  const [name, setName] = useState("");
  const [recipe, setRecipe] = useState("");
  const [objective, setObjective] = useState("maximize abs(cd_at_exciton)");
  const [optimizer, setOptimizer] = useState("snobfit");
  const [budget, setBudget] = useState(250);
  const [batch, setBatch] = useState(1);
  const [seed, setSeed] = useState(1);
  const [target, setTarget] = useState("");
  const [start, setStart] = useState(true);
  const space = useMemo(() => parseSpace(recipe), [recipe]);
  const [diags, setDiags] = useState<Diag[] | null>(null);
  const [compileOk, setCompileOk] = useState<boolean | null>(null);
  const [compileErr, setCompileErr] = useState<unknown>(null);
  const [checking, setChecking] = useState(false);
  const area = useRef<HTMLTextAreaElement>(null);
  const a = useAction();

  // live diagnostics: compile 300 ms after the last keystroke
  useEffect(() => {
    if (!lab || !recipe.trim()) {
      setDiags(null);
      setCompileOk(null);
      return;
    }
    let stale = false;
    const t = setTimeout(() => {
      setChecking(true);
      gql<CompileQuery, CompileQueryVariables>(COMPILE, { lab: lab.id, source: recipe, vars: space ? midpoints(space) : null })
        .then((r) => {
          if (stale) return;
          setDiags(r.compileRecipe.diagnostics);
          setCompileOk(r.compileRecipe.ok);
          setCompileErr(null);
        })
        .catch((e) => {
          if (stale) return;
          setCompileErr(e);
          setDiags(null);
          setCompileOk(null);
        })
        .finally(() => !stale && setChecking(false));
    }, 300);
    return () => {
      stale = true;
      clearTimeout(t);
    };
  }, [lab, recipe, space]);

  const jump = (d: Diag) => {
    const el = area.current;
    if (!el) return;
    const lines = recipe.split("\n");
    let pos = 0;
    for (let i = 0; i < d.line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
    const from = pos + d.column - 1;
    let end = 0;
    for (let i = 0; i < d.endLine - 1 && i < lines.length; i++) end += lines[i].length + 1;
    el.focus();
    el.setSelectionRange(from, Math.max(from, end + d.endColumn - 1));
  };

  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (!lab) return;
    void a.run(async () => {
      const r = await gql<CreateCampaignMutation, CreateCampaignMutationVariables>(CREATE_CAMPAIGN, {
        org: orgId, lab: lab.id, name, recipe, objective, optimizer, seed, budget, batch,
        target: target.trim() === "" ? null : Number(target), start,
      });
      navigate(`/campaigns/${r.createCampaign.id}`);
    });
  };

  if (labs.loading) return <Loading what="labs" />;
  if (labs.error) return <ErrorBox error={labs.error} />;
  const errors = (diags ?? []).filter((d) => d.severity === "error").length;
  return (
    <>
      <p><Link to="/campaigns">← Campaigns</Link></p>
      <h1>New campaign</h1>
      {queueable.length === 0 ? (
        <Empty>No lab you may queue on. <Link to="/labs">Create a lab</Link> and enroll its agent first.</Empty>
      ) : (
        <form onSubmit={submit} className="builder" aria-describedby="builder-help">
          <p id="builder-help" className="muted">The recipe's declared variables are the optimizer's search space; it is compiled against the lab's devices as you type.</p>
          <div className="grid2">
            <label>
              Name
              <input required value={name} onChange={(e) => setName(e.target.value)} placeholder="chirality sweep" />
            </label>
            <label>
              Lab
              <select value={lab?.id} onChange={(e) => setLabId(e.target.value)}>
                {queueable.map((l) => <option key={l.id} value={l.id}>{l.name} ({l.online ? "online" : "offline"})</option>)}
              </select>
            </label>
          </div>
          <div className="recipe">
            <label htmlFor="recipe">Recipe</label>
            <button type="button" className="small" onClick={() => setRecipe(exampleRecipe)}>Insert the paper's chirality recipe</button>
            <textarea
              id="recipe"
              ref={area}
              required
              spellCheck={false}
              rows={18}
              value={recipe}
              onChange={(e) => setRecipe(e.target.value)}
              aria-describedby="diagnostics"
              aria-invalid={errors > 0}
              className="mono"
            />
            <div id="diagnostics" aria-live="polite" data-testid="diagnostics">
              {checking && <span className="muted">Checking…</span>}
              <ErrorBox error={compileErr} title="Cannot check the recipe" />
              {compileOk === true && <p className="ok" data-testid="compile-ok">✓ Compiles for {lab?.name}{diags && diags.length > 0 ? ` (${diags.length} note${diags.length > 1 ? "s" : ""})` : ""}</p>}
              {diags && diags.length > 0 && (
                <ol className="diags">
                  {diags.map((d, i) => (
                    <li key={i} className={`diag ${d.severity}`} data-testid="diagnostic">
                      <button type="button" className="linklike" onClick={() => jump(d)} aria-label={`Go to line ${d.line}, column ${d.column}`}>
                        {d.line}:{d.column}
                      </button>{" "}
                      <strong>{d.severity}</strong> <code>{d.code}</code>: {d.message}
                      <Excerpt source={recipe} d={d} />
                      {d.hint && <div className="hint">hint: {d.hint}</div>}
                    </li>
                  ))}
                </ol>
              )}
            </div>
          </div>
          <section className="space" aria-label="Parameter space">
            <h2>Parameter space</h2>
            {!space || space.length === 0 ? (
              <Empty>The recipe header declares the variables, e.g. <code>recipe r(T: °C in 90..180 step 0.5)</code>.</Empty>
            ) : (
              <table data-testid="space">
                <thead><tr><th>Variable</th><th>Unit</th><th>From</th><th>To</th><th>Step</th></tr></thead>
                <tbody>
                  {space.map((p) => (
                    <tr key={p.name}><td><code>{p.name}</code></td><td>{p.unit}</td><td>{p.lower}</td><td>{p.upper}</td><td>{p.step ?? "continuous"}</td></tr>
                  ))}
                </tbody>
              </table>
            )}
          </section>
          <div className="grid3">
            <label>
              Objective
              <input required value={objective} onChange={(e) => setObjective(e.target.value)} className="mono" />
            </label>
            <label>
              Optimizer
              <select value={optimizer} onChange={(e) => setOptimizer(e.target.value)}>
                {OPTIMIZERS.map(([v, l]) => <option key={v} value={v}>{l}</option>)}
              </select>
            </label>
            <label>
              Seed
              <input type="number" value={seed} onChange={(e) => setSeed(Number(e.target.value))} />
            </label>
            <label>
              Budget (experiments)
              <input type="number" min={1} required value={budget} onChange={(e) => setBudget(Number(e.target.value))} />
            </label>
            <label>
              Batch (in flight at once)
              <input type="number" min={1} required value={batch} onChange={(e) => setBatch(Number(e.target.value))} />
            </label>
            <label>
              Target <small>(optional: stop when reached)</small>
              <input type="number" step="any" value={target} onChange={(e) => setTarget(e.target.value)} />
            </label>
          </div>
          <label className="check">
            <input type="checkbox" checked={start} onChange={(e) => setStart(e.target.checked)} /> Start at once
          </label>
          <ErrorBox error={a.error} title={a.error instanceof ApiError && a.error.code === "BAD_USER_INPUT" ? "The campaign was refused" : "Cannot create the campaign"} />
          <button type="submit" className="primary" disabled={a.busy || errors > 0}>
            {a.busy ? "Creating…" : "Create campaign"}
          </button>
        </form>
      )}
    </>
  );
}

/** The diagnostic's source line with a caret under its span. */
function Excerpt({ source, d }: { source: string; d: Diag }) {
  const line = source.split("\n")[d.line - 1];
  if (line === undefined) return null;
  const width = d.endLine === d.line ? Math.max(1, d.endColumn - d.column) : Math.max(1, line.length - d.column + 1);
  return (
    <pre className="excerpt" aria-hidden="true">
      <span className="lno">{String(d.line).padStart(3)} | </span>
      {line}
      {"\n"}
      <span className="lno">{"    | "}</span>
      {" ".repeat(Math.max(0, d.column - 1))}
      <span className="caret">{"^".repeat(width)}</span>
    </pre>
  );
}
