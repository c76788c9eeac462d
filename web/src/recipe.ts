// Reads the parameter space a recipe declares in its header, e.g.
// `recipe chirality(T: °C in 90..180 step 0.5, C: mmol/ml in 0.2..1.2 step 0.01)`.
// The server derives the same space when the campaign is created; this is only for display
// and for the example bindings sent with `compileRecipe`.

export type SpaceParam = { name: string; unit: string; lower: number; upper: number; step: number | null };

export function parseSpace(source: string): SpaceParam[] | null {
  const m = /\brecipe\s+[A-Za-z_][\w]*\s*\(([^)]*)\)/.exec(stripComments(source));
  if (!m) return null;
  const out: SpaceParam[] = [];
  for (const part of m[1].split(",")) {
    const p = /^\s*\$?([A-Za-z_]\w*)\s*:\s*(.*?)\s+in\s+(-?[\d.]+(?:e-?\d+)?)\s*\.\.\s*(-?[\d.]+(?:e-?\d+)?)(?:\s+step\s+([\d.]+(?:e-?\d+)?))?\s*$/i.exec(part);
    if (!p) {
      if (part.trim()) return null;
      continue;
    }
    out.push({ name: p[1], unit: p[2].trim(), lower: Number(p[3]), upper: Number(p[4]), step: p[5] ? Number(p[5]) : null });
  }
  return out;
}

function stripComments(s: string): string {
  return s
    .split("\n")
    .map((l) => l.replace(/#.*$/, ""))
    .join("\n");
}

/** The middle of each range, on the grid, as example bindings. */
export function midpoints(space: SpaceParam[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of space) {
    let v = (p.lower + p.upper) / 2;
    if (p.step) v = p.lower + Math.round((v - p.lower) / p.step) * p.step;
    out[p.name] = Number(v.toFixed(6));
  }
  return out;
}
