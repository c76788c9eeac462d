import type { ExperimentQuery, ExperimentQueryVariables } from "../generated/graphql";
import { EXPERIMENT } from "../ops";
import { Link } from "../router";
import { ErrorBox, fmt, fmtTime, Loading, NotFound, paramText, StateBadge, useQuery } from "../ui";
import { Spectra } from "./Spectra";

export function ExperimentPage({ id }: { id: string }) {
  const q = useQuery<ExperimentQuery, ExperimentQueryVariables>(EXPERIMENT, { id }, [id]);
  if (q.loading && !q.data) return <Loading what="the experiment" />;
  if (q.error && !q.data) return <ErrorBox error={q.error} title="Cannot load the experiment" />;
  const e = q.data?.experiment;
  if (!e) return <NotFound what="experiment" />;
  return (
    <>
      <p><Link to={`/campaigns/${e.campaignId}`}>← Campaign</Link></p>
      <h1 data-testid="experiment-name">
        Experiment {e.seq}: {e.name} <StateBadge state={e.state} />
      </h1>
      <ExperimentSummary e={e} />
      <Spectra e={e} />
      <Features e={e} />
      <details>
        <summary>Provenance (compiled program, optimizer proposal, campaign settings)</summary>
        <pre className="json">{JSON.stringify(e.provenance, null, 2)}</pre>
      </details>
    </>
  );
}

type Exp = NonNullable<ExperimentQuery["experiment"]>;
type FeatureKey = keyof NonNullable<Exp["features"]>;

const FEATURES: [FeatureKey, string][] = [
  ["excitonWavelengthNm", "Exciton wavelength (nm)"],
  ["excitonAbsorbance", "Exciton absorbance (above baseline)"],
  ["excitonFwhmNm", "Exciton FWHM (nm)"],
  ["absorbanceAtExciton", "Absorbance at the exciton"],
  ["cdAtExcitonMdeg", "CD at the exciton (mdeg)"],
  ["cdExtremumMdeg", "CD extremum (mdeg)"],
  ["cdExtremumWavelengthNm", "CD extremum wavelength (nm)"],
  ["gFactor", "g-factor"],
  ["peakCount", "Fitted peaks"],
  ["fitRSquared", "Fit R²"],
  ["fitReducedChiSquare", "Fit reduced χ²"],
];

function Features({ e }: { e: Exp }) {
  const f = e.features;
  return (
    <details>
      <summary>Features</summary>
      {f ? (
        <table className="compact" data-testid="features-table">
          <tbody>
            {FEATURES.map(([k, label]) => <tr key={k}><th scope="row">{label}</th><td>{fmt(f[k], 5)}</td></tr>)}
          </tbody>
        </table>
      ) : (
        <p className="muted">Not analysed yet.</p>
      )}
    </details>
  );
}

export function ExperimentSummary({ e }: { e: NonNullable<ExperimentQuery["experiment"]> }) {
  return (
    <dl className="facts">
      <div><dt>Conditions</dt><dd>{paramText(e.parameters)}</dd></div>
      <div><dt>Objective</dt><dd data-testid="objective-value">{fmt(e.objectiveValue, 4)}</dd></div>
      <div><dt>Source</dt><dd>{e.source}</dd></div>
      <div><dt>Outcome</dt><dd>{e.outcome ?? "—"}{e.error ? `: ${e.error}` : ""}</dd></div>
      <div><dt>Queued</dt><dd>{fmtTime(e.queuedAt)}</dd></div>
      <div><dt>Finished</dt><dd>{fmtTime(e.finishedAt)}</dd></div>
    </dl>
  );
}
