// The portal's only link to the server: GraphQL over fetch (queries, mutations) and graphql-ws
// (subscriptions). The session's access token lives in memory only; the refresh token is an
// httpOnly cookie the portal cannot read (it asks for it with `X-Session-Cookie: 1`), exchanged
// at `POST /auth/refresh` with the CSRF token from the `maosic_csrf` cookie as a header. A page
// load restores the session that way.
import { createClient, type Client } from "graphql-ws";

export type Session = {
  accessToken: string;
  userId: string;
  email: string;
  displayName: string;
};

let session: Session | null = null;
let restoring = true;
const listeners = new Set<() => void>();

export function getSession(): Session | null {
  return session;
}

/** Whether the session of an earlier page load is still being restored (show nothing yet). */
export function isRestoring(): boolean {
  return restoring;
}

export function setSession(s: Session | null): void {
  session = s;
  restoring = false;
  resetWs();
  listeners.forEach((l) => l());
}

export function onSession(l: () => void): () => void {
  listeners.add(l);
  return () => listeners.delete(l);
}

/** An error the API answered with (its stable `extensions.code`), or a transport failure. */
export class ApiError extends Error {
  code: string;
  constructor(message: string, code: string) {
    super(message);
    this.code = code;
  }
}

type GqlResponse<T> = {
  data?: T | null;
  errors?: { message: string; extensions?: { code?: string } }[];
};

async function post<T>(query: string, variables: unknown, token: string | null): Promise<GqlResponse<T>> {
  let res: Response;
  try {
    res = await fetch("/graphql", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        // refresh tokens come back as an httpOnly cookie, never in the body
        "x-session-cookie": "1",
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify({ query, variables }),
    });
  } catch {
    throw new ApiError("The server cannot be reached. Check your connection and try again.", "NETWORK");
  }
  try {
    return (await res.json()) as GqlResponse<T>;
  } catch {
    throw new ApiError(`The server answered ${res.status} ${res.statusText}.`, "HTTP_" + res.status);
  }
}

let refreshing: Promise<boolean> | null = null;

function csrfToken(): string {
  const m = /(?:^|;\s*)maosic_csrf=([^;]*)/.exec(document.cookie);
  return m ? decodeURIComponent(m[1]) : "";
}

type Refreshed = { accessToken: string; user: { id: string; email: string; displayName: string } };

async function exchangeCookie(): Promise<Refreshed | null> {
  const res = await fetch("/auth/refresh", {
    method: "POST",
    credentials: "same-origin",
    headers: { "x-csrf-token": csrfToken() },
  });
  return res.ok ? ((await res.json()) as Refreshed) : null;
}

/** Exchanges the refresh cookie once (concurrent callers share the exchange; tabs take turns,
 *  since each exchange rotates the cookie and a stale one would end the session). */
async function refresh(): Promise<boolean> {
  refreshing ??= (async () => {
    try {
      const locks = (navigator as Navigator & { locks?: LockManager }).locks;
      const p = locks ? await locks.request("maosic-refresh", exchangeCookie) : await exchangeCookie();
      if (!p) {
        setSession(null);
        return false;
      }
      setSession({ accessToken: p.accessToken, userId: p.user.id, email: p.user.email, displayName: p.user.displayName });
      return true;
    } catch {
      setSession(null);
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** Restores the session of an earlier page load from the refresh cookie. */
export async function restoreSession(): Promise<boolean> {
  if (!csrfToken()) {
    setSession(null);
    return false;
  }
  return refresh();
}

/** Runs one GraphQL operation; throws `ApiError` with the first error. */
export async function gql<T, V = Record<string, never>>(query: string, variables?: V): Promise<T> {
  let r = await post<T>(query, variables ?? {}, session?.accessToken ?? null);
  if (r.errors?.[0]?.extensions?.code === "UNAUTHENTICATED" && session && (await refresh())) {
    r = await post<T>(query, variables ?? {}, session?.accessToken ?? null);
  }
  if (r.errors && r.errors.length > 0) {
    const e = r.errors[0];
    const code = e.extensions?.code ?? "ERROR";
    if (code === "UNAUTHENTICATED") setSession(null);
    throw new ApiError(e.message, code);
  }
  if (!r.data) throw new ApiError("The server sent no data.", "NO_DATA");
  return r.data;
}

// ---- subscriptions (graphql-ws, protocol graphql-transport-ws)

let ws: Client | null = null;

function resetWs(): void {
  const old = ws;
  ws = null;
  void old?.dispose();
}

function wsClient(): Client {
  ws ??= createClient({
    url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql/ws`,
    lazy: true,
    retryAttempts: 1000,
    shouldRetry: () => true,
    connectionParams: () => ({ authorization: `Bearer ${session?.accessToken ?? ""}` }),
    on: {
      closed: (e) => {
        // 4401: the session ended or the token was revoked; try a refresh for the next connect
        if ((e as CloseEvent | undefined)?.code === 4401) void refresh();
      },
    },
  });
  return ws;
}

/** Subscribes; `onData` gets each event's data. Returns the unsubscribe function. */
export function subscribe<T>(query: string, variables: Record<string, unknown>, onData: (d: T) => void, onError?: (e: unknown) => void): () => void {
  return wsClient().subscribe<T>(
    { query, variables },
    {
      next: (v) => v.data && onData(v.data as T),
      error: (e) => onError?.(e),
      complete: () => {},
    },
  );
}

/** Downloads a file the API serves behind the bearer token (fetch → blob → a link click). */
export async function download(path: string, filename: string): Promise<void> {
  const go = () => fetch(path, { headers: { authorization: `Bearer ${session?.accessToken ?? ""}` } });
  let res = await go();
  if (res.status === 401 && (await refresh())) res = await go();
  if (!res.ok) throw new ApiError(`Export failed: the server answered ${res.status}.`, "HTTP_" + res.status);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
