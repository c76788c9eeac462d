// The selected experiment's absorption spectrum with the fitted curve and peak markers, and its
// CD spectrum.
import { useMemo } from "react";
import type { AlignedData } from "uplot";
import type { ExperimentQuery } from "../generated/graphql";
import { join, lineOptions, UPlot } from "../plots";
import { Empty, fmt } from "../ui";

type Exp = NonNullable<ExperimentQuery["experiment"]>;

function arr(v: unknown): number[] | null {
  return Array.isArray(v) && v.every((x) => typeof x === "number") ? (v as number[]) : null;
}

function last(e: Exp, kind: string) {
  const ms = e.measurements.filter((m) => m.kind === kind);
  return ms[ms.length - 1];
}

const SHAPE: Record<NonNullable<Exp["fittedPeaks"]>["shape"], string> = {
  GAUSSIAN: "Gaussian", LORENTZIAN: "Lorentzian", VOIGT: "Voigt", PSEUDO_VOIGT: "pseudo-Voigt",
};

const ABS_OPTS_BASE = {
  xLabel: "wavelength (nm)",
  yLabel: "absorbance",
  series: [
    { label: "measured", color: "#1f77b4" },
    { label: "fit", color: "#ff7f0e", dash: [6, 3] },
  ],
};

export function Spectra({ e }: { e: Exp }) {
  const abs = last(e, "absorption_spectrum");
  const cd = last(e, "cd_spectrum");
  const fit = e.fittedPeaks ?? null;
  const peaks = fit?.peaks ?? [];

  const absData = useMemo<AlignedData | null>(() => {
    const d = abs?.data as Record<string, unknown> | undefined;
    const wl = arr(d?.wavelength_nm);
    const a = arr(d?.absorbance);
    if (!wl || !a) return null;
    const cw = fit?.curve.wavelengthNm ?? null;
    const ca = fit?.curve.absorbance ?? null;
    const sortPair = (x: number[], y: number[]) => {
      const idx = x.map((_, i) => i).sort((i, j) => x[i] - x[j]);
      return [idx.map((i) => x[i]), idx.map((i) => y[i])] as [number[], number[]];
    };
    const m = sortPair(wl, a);
    if (cw && ca && cw.length === ca.length) return join([m, sortPair(cw, ca)]);
    return [m[0], m[1], m[1].map(() => null)];
  }, [abs, fit]);

  const markersRef = useMemo(() => ({ list: [] as { x: number; label: string }[] }), []);
  markersRef.list = peaks
    .filter((p) => typeof p.centerNm === "number")
    .map((p) => ({ x: p.centerNm as number, label: `${p.index + 1}` }));
  const absOpts = useMemo(() => lineOptions({ ...ABS_OPTS_BASE, markers: () => markersRef.list }), [markersRef]);

  const cdData = useMemo<AlignedData | null>(() => {
    const d = cd?.data as Record<string, unknown> | undefined;
    const wl = arr(d?.wavelength_nm);
    const v = arr(d?.cd_mdeg);
    if (!wl || !v) return null;
    const idx = wl.map((_, i) => i).sort((i, j) => wl[i] - wl[j]);
    return [idx.map((i) => wl[i]), idx.map((i) => v[i])];
  }, [cd]);
  const cdOpts = useMemo(() => lineOptions({ xLabel: "wavelength (nm)", yLabel: "CD (mdeg)", series: [{ label: "CD", color: "#2ca02c" }] }), []);

  return (
    <div className="spectra">
      <figure>
        <figcaption>Absorption spectrum{fit ? ` with ${SHAPE[fit.shape]} fit` : ""}{typeof fit?.rSquared === "number" ? ` (R² = ${fit.rSquared.toFixed(4)})` : ""}</figcaption>
        {absData ? (
          <UPlot options={absOpts} data={absData} height={260} label="Absorption spectrum with the fitted curve and peak markers" testid="absorption-plot" extra={{ points: abs ? (arr((abs.data as Record<string, unknown>).wavelength_nm)?.length ?? 0) : 0, peaks: peaks.length }} />
        ) : (
          <Empty>No absorption spectrum {e.state === "COMPLETED" ? "was recorded" : "yet"}.</Empty>
        )}
      </figure>
      {peaks.length > 0 && (
        <table className="compact" data-testid="peaks-table">
          <caption>Fitted peaks</caption>
          <thead><tr><th>#</th><th>Exciton</th><th>Centre (nm)</th><th>Amplitude</th><th>FWHM (nm)</th></tr></thead>
          <tbody>
            {peaks.map((p) => (
              <tr key={p.index}><td>{p.index + 1}</td><td>{p.exciton ? "yes" : "no"}</td><td>{fmt(p.centerNm, 4)}</td><td>{fmt(p.amplitude)}</td><td>{fmt(p.fwhmNm)}</td></tr>
            ))}
          </tbody>
        </table>
      )}
      <figure>
        <figcaption>CD spectrum</figcaption>
        {cdData ? (
          <UPlot options={cdOpts} data={cdData} height={220} label="CD spectrum" testid="cd-plot" extra={{ points: cdData[0].length }} />
        ) : (
          <Empty>No CD spectrum {e.state === "COMPLETED" ? "was recorded" : "yet"}.</Empty>
        )}
      </figure>
    </div>
  );
}
