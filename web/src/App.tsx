import { createContext, useContext, useEffect, useState, useSyncExternalStore } from "react";
import { getSession, gql, isRestoring, onSession, setSession } from "./api";
import type { LogOutMutation, MeQuery } from "./generated/graphql";
import { LOG_OUT, ME } from "./ops";
import { Link, match, navigate, usePath } from "./router";
import { ErrorBox, Loading, useQuery } from "./ui";
import { SignIn, SignUp } from "./pages/Auth";
import { OrgPage } from "./pages/Org";
import { LabPage, LabsPage } from "./pages/Labs";
import { CampaignsPage, NewCampaignPage } from "./pages/Campaigns";
import { CampaignPage } from "./pages/Campaign";
import { ExperimentPage } from "./pages/Experiment";
import { TokensPage } from "./pages/Tokens";

export type Me = MeQuery["me"];
type Ctx = { me: Me; orgId: string; setOrgId: (id: string) => void; reloadMe: () => Promise<void> };
const AppCtx = createContext<Ctx | null>(null);

export function useApp(): Ctx {
  const c = useContext(AppCtx);
  if (!c) throw new Error("useApp outside the signed-in app");
  return c;
}

const ORG_KEY = "maosic.org";

export function App() {
  const session = useSyncExternalStore(onSession, getSession);
  const path = usePath();
  if (!session && isRestoring()) return <Loading what="your session" />;
  if (!session) {
    if (path === "/signup") return <SignUp />;
    return <SignIn />;
  }
  return <SignedIn key={session.userId} />;
}

function SignedIn() {
  const me = useQuery<MeQuery, Record<string, never>>(ME, {}, []);
  const [orgId, setOrgIdState] = useState(() => localStorage.getItem(ORG_KEY) ?? "");
  const memberships = me.data?.me.memberships ?? [];
  const valid = memberships.some((m) => m.organization.id === orgId);
  const effectiveOrg = valid ? orgId : (memberships[0]?.organization.id ?? "");
  const setOrgId = (id: string) => {
    localStorage.setItem(ORG_KEY, id);
    setOrgIdState(id);
  };
  if (me.loading && !me.data) return <Loading what="your account" />;
  if (!me.data) {
    return (
      <main className="page">
        <ErrorBox error={me.error} title="Cannot load your account" />
        <button type="button" onClick={() => void me.reload()}>Retry</button>{" "}
        <button type="button" onClick={() => setSession(null)}>Sign out</button>
      </main>
    );
  }
  return (
    <AppCtx.Provider value={{ me: me.data.me, orgId: effectiveOrg, setOrgId, reloadMe: me.reload }}>
      <Shell />
    </AppCtx.Provider>
  );
}

function Shell() {
  const { me, orgId, setOrgId } = useApp();
  const path = usePath();
  const [menu, setMenu] = useState(false);
  useEffect(() => setMenu(false), [path]);
  useEffect(() => {
    if (path === "/signin" || path === "/signup") navigate("/", true);
  }, [path]);
  const signOut = async () => {
    try {
      await gql<LogOutMutation>(LOG_OUT);
    } catch {
      /* the session ends locally in any case */
    }
    setSession(null);
    navigate("/signin", true);
  };
  const nav: [string, string][] = [
    ["/campaigns", "Campaigns"],
    ["/labs", "Labs"],
    ["/org", "Organisation"],
    ["/tokens", "API tokens"],
  ];
  return (
    <>
      <a className="skip" href="#main">Skip to content</a>
      <header className="top">
        <Link to="/campaigns" className="brand">MAOSIC</Link>
        <button type="button" className="menu-toggle" aria-expanded={menu} aria-controls="nav" onClick={() => setMenu(!menu)}>
          Menu
        </button>
        <nav id="nav" className={menu ? "open" : ""} aria-label="Main">
          {nav.map(([to, label]) => (
            <Link key={to} to={to} aria-current={path.startsWith(to) ? "page" : undefined}>
              {label}
            </Link>
          ))}
        </nav>
        <div className="who">
          <label className="orgswitch">
            <span className="sr-only">Organisation</span>
            <select aria-label="Organisation" value={orgId} onChange={(e) => setOrgId(e.target.value)} data-testid="org-switcher">
              {me.memberships.map((m) => (
                <option key={m.organization.id} value={m.organization.id}>
                  {m.organization.name} ({m.role.toLowerCase()})
                </option>
              ))}
            </select>
          </label>
          <span className="user" title={me.email}>{me.displayName}</span>
          <button type="button" onClick={() => void signOut()}>Sign out</button>
        </div>
      </header>
      <main id="main" className="page">
        <Routes path={path} />
      </main>
    </>
  );
}

function Routes({ path }: { path: string }) {
  let m: Record<string, string> | null;
  if (path === "/" || path === "/campaigns") return <CampaignsPage />;
  if (path === "/campaigns/new") return <NewCampaignPage />;
  if ((m = match("/campaigns/:id", path))) return <CampaignPage key={m.id} id={m.id} />;
  if ((m = match("/experiments/:id", path))) return <ExperimentPage key={m.id} id={m.id} />;
  if (path === "/labs") return <LabsPage />;
  if ((m = match("/labs/:id", path))) return <LabPage key={m.id} id={m.id} />;
  if (path === "/org") return <OrgPage />;
  if (path === "/tokens") return <TokensPage />;
  return (
    <section data-testid="not-found">
      <h1>Not found</h1>
      <p>There is no page at this address. <Link to="/campaigns">Go to campaigns</Link>.</p>
    </section>
  );
}

/** The caller's role in the current organisation. */
export function useRole(): string | null {
  const { me, orgId } = useApp();
  return me.memberships.find((m) => m.organization.id === orgId)?.role ?? null;
}
