// Interactive plots on uPlot (canvas; zoom by dragging, double-click to reset, hover read-out).
import { useEffect, useRef } from "react";
import uPlot, { type AlignedData, type Options } from "uplot";

type Size = { width: number; height: number };

/** Mounts a uPlot chart that follows its container's width; new data is set in place. */
export function UPlot({ options, data, height = 320, label, testid, extra }: {
  options: Omit<Options, "width" | "height">;
  data: AlignedData;
  height?: number;
  label: string;
  testid?: string;
  extra?: Record<string, string | number>;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const dataRef = useRef(data);
  dataRef.current = data;
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const size = (): Size => ({ width: Math.max(240, el.clientWidth), height });
    const u = new uPlot({ ...options, ...size() } as Options, dataRef.current, el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize(size()));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // options are rebuilt by the caller only when their shape changes
  }, [options, height]);
  useEffect(() => {
    plot.current?.setData(data, true);
  }, [data]);
  const attrs: Record<string, string | number> = {};
  for (const [k, v] of Object.entries(extra ?? {})) attrs[`data-${k}`] = v;
  return <div ref={box} className="plot" role="img" aria-label={label} data-testid={testid} {...attrs} />;
}

// ---- colour map (viridis, 6 stops)
const VIRIDIS = [
  [68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81], [253, 231, 37],
];

export function viridis(t: number): string {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const c = VIRIDIS[i].map((v, k) => Math.round(v + (VIRIDIS[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export const VIRIDIS_CSS = `linear-gradient(to right, ${VIRIDIS.map((c) => `rgb(${c.join(",")})`).join(", ")})`;

export type MapPoint = { id: string; x: number; y: number; value: number | null; seq: number; name: string };

/**
 * The sampled points on the plane of the first two parameters, coloured by |objective|
 * (the paper's Fig. 2a). Click a point to select its experiment.
 */
export function scatterOptions(p: {
  xLabel: string; yLabel: string; xRange: [number, number]; yRange: [number, number];
  points: () => MapPoint[]; selected: () => string | null; onPick: (id: string) => void;
}): Omit<Options, "width" | "height"> {
  const draw = (u: uPlot) => {
    const pts = p.points();
    const ctx = u.ctx;
    const vals = pts.map((q) => (q.value === null ? NaN : Math.abs(q.value))).filter(Number.isFinite);
    const lo = vals.length ? Math.min(...vals) : 0;
    const hi = vals.length ? Math.max(...vals) : 1;
    const r = 5 * devicePixelRatio;
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    const sel = p.selected();
    for (const q of pts) {
      const cx = u.valToPos(q.x, "x", true);
      const cy = u.valToPos(q.y, "y", true);
      ctx.beginPath();
      ctx.arc(cx, cy, q.id === sel ? r * 1.6 : r, 0, 2 * Math.PI);
      if (q.value === null) {
        ctx.strokeStyle = "#888";
        ctx.lineWidth = devicePixelRatio;
        ctx.stroke();
      } else {
        ctx.fillStyle = viridis(hi > lo ? (Math.abs(q.value) - lo) / (hi - lo) : 1);
        ctx.fill();
        ctx.strokeStyle = q.id === sel ? "#d62728" : "rgba(0,0,0,0.35)";
        ctx.lineWidth = (q.id === sel ? 2.5 : 0.8) * devicePixelRatio;
        ctx.stroke();
      }
    }
    ctx.restore();
  };
  return {
    mode: 1,
    legend: { show: false },
    cursor: { drag: { x: true, y: true, uni: 20 }, points: { show: false } },
    scales: { x: { time: false, range: p.xRange }, y: { range: p.yRange } },
    axes: [{ label: p.xLabel }, { label: p.yLabel }],
    series: [{}, { label: p.yLabel, paths: () => null, points: { show: false } }],
    hooks: {
      draw: [draw],
      ready: [
        (u) => {
          u.over.addEventListener("click", () => {
            const { left, top } = u.cursor;
            if (left === undefined || top === undefined || left < 0) return;
            let best: MapPoint | null = null;
            let bd = Infinity;
            for (const q of p.points()) {
              const d = Math.hypot(u.valToPos(q.x, "x") - left, u.valToPos(q.y, "y") - top);
              if (d < bd) {
                bd = d;
                best = q;
              }
            }
            if (best && bd < 24) p.onPick(best.id);
          });
        },
      ],
    },
  };
}

export function lineOptions(p: {
  xLabel: string; series: { label: string; color: string; points?: boolean; line?: boolean; dash?: number[] }[];
  yLabel: string; markers?: () => { x: number; label: string }[];
}): Omit<Options, "width" | "height"> {
  const drawMarkers = (u: uPlot) => {
    const ms = p.markers?.() ?? [];
    if (!ms.length) return;
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#d62728";
    ctx.fillStyle = "#d62728";
    ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
    ctx.lineWidth = devicePixelRatio;
    ctx.font = `${11 * devicePixelRatio}px sans-serif`;
    ctx.textAlign = "center";
    for (const m of ms) {
      const x = u.valToPos(m.x, "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
      ctx.fillText(m.label, x, u.bbox.top + 12 * devicePixelRatio);
    }
    ctx.restore();
  };
  return {
    mode: 1,
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: false } },
    axes: [{ label: p.xLabel }, { label: p.yLabel }],
    series: [
      { label: p.xLabel },
      ...p.series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: s.line === false ? 0 : 1.5,
        dash: s.dash,
        spanGaps: true,
        paths: s.line === false ? () => null : undefined,
        points: { show: s.points ?? false, size: 5, fill: s.color, stroke: s.color },
      })),
    ],
    hooks: { draw: [drawMarkers] },
  };
}

export const join = (tables: AlignedData[]): AlignedData => uPlot.join(tables as [number[], ...(number | null)[][]][]);
