// Shared pieces: data loading with loading/error states, and small presentational components.
import { useCallback, useEffect, useRef, useState, type ReactNode } from "react";
import { ApiError, gql } from "./api";

export type Loaded<T> = { data: T | null; error: ApiError | null; loading: boolean; reload: () => Promise<void> };

/** Runs a query when `key` changes; `reload` runs it again keeping the old data on screen. */
export function useQuery<T, V>(query: string, variables: V, key: unknown[], skip = false): Loaded<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const [loading, setLoading] = useState(!skip);
  const vars = useRef(variables);
  vars.current = variables;
  const gen = useRef(0);
  const run = useCallback(async () => {
    const g = ++gen.current;
    try {
      const d = await gql<T, V>(query, vars.current);
      if (g === gen.current) {
        setData(d);
        setError(null);
      }
    } catch (e) {
      if (g === gen.current) setError(e instanceof ApiError ? e : new ApiError(String(e), "ERROR"));
    } finally {
      if (g === gen.current) setLoading(false);
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [query, ...key]);
  useEffect(() => {
    if (skip) return;
    setLoading(true);
    setData(null);
    void run();
  }, [run, skip]);
  return { data, error, loading, reload: run };
}

export function Loading({ what }: { what: string }) {
  return (
    <p className="loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" /> Loading {what}…
    </p>
  );
}

export function ErrorBox({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  const msg = error instanceof Error ? error.message : String(error);
  const code = error instanceof ApiError ? error.code : null;
  return (
    <div className="error" role="alert">
      <strong>{title ?? "Something went wrong"}</strong>: {msg}
      {code && code !== "ERROR" ? <span className="code"> ({code})</span> : null}
    </div>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="empty">{children}</p>;
}

export function NotFound({ what }: { what: string }) {
  return (
    <section className="notfound" data-testid="not-found">
      <h1>Not found</h1>
      <p>
        This {what} does not exist, or you do not have access to it. Check the address, or ask an
        owner of its organisation to invite you.
      </p>
    </section>
  );
}

/** A campaign's, experiment's or command's state (a GraphQL enum value such as `TIMED_OUT`), shown in lower case. */
export function StateBadge({ state }: { state: string }) {
  const s = state.toLowerCase().replace(/[^a-z_]/g, "");
  return <span className={`badge state-${s}`}>{s.replace(/_/g, " ")}</span>;
}

export function Online({ online }: { online: boolean }) {
  return (
    <span className={`badge ${online ? "online" : "offline"}`} data-testid="lab-online">
      {online ? "online" : "offline"}
    </span>
  );
}

export function fmt(v: unknown, digits = 3): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(digits + 1).replace(/\.?0+$/, "");
  return String(v);
}

export function fmtTime(s: string | null | undefined): string {
  if (!s) return "—";
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? s : d.toLocaleString();
}

/** An experiment's typed conditions (`[{name: "T", value: 130}, …]`) as `{name: value}`. */
export function numbers(v: ReadonlyArray<{ name: string; value: number }> | null | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of v ?? []) out[p.name] = p.value;
  return out;
}

export function paramText(v: ReadonlyArray<{ name: string; value: number }> | null | undefined): string {
  const n = numbers(v);
  return Object.entries(n)
    .map(([k, x]) => `${k} = ${fmt(x, 4)}`)
    .join(", ");
}

/** Button that runs an async action, disabled while it runs, and shows its error. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const run = useCallback(async (f: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, setError };
}

export function CopyField({ label, value, testid }: { label: string; value: string; testid?: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <div className="copyfield">
      <label>
        {label}
        <input readOnly value={value} data-testid={testid} onFocus={(e) => e.currentTarget.select()} />
      </label>
      <button
        type="button"
        onClick={() => {
          void navigator.clipboard?.writeText(value).then(() => setCopied(true), () => setCopied(false));
        }}
      >
        {copied ? "Copied" : "Copy"}
      </button>
    </div>
  );
}
