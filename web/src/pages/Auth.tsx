import { useState, type FormEvent } from "react";
import { gql, setSession } from "../api";
import type {
  LogInMutation,
  LogInMutationVariables,
  SignUpMutation,
  SignUpMutationVariables,
  VerifyEmailMutation,
  VerifyEmailMutationVariables,
} from "../generated/graphql";
import { LOG_IN, SIGN_UP, VERIFY_EMAIL } from "../ops";
import { Link, navigate } from "../router";
import { ErrorBox, useAction } from "../ui";

type Payload = { accessToken: string; user: { id: string; email: string; displayName: string } };

function start(p: Payload) {
  // the refresh token came as an httpOnly cookie; only the access token is kept, in memory
  setSession({ accessToken: p.accessToken, userId: p.user.id, email: p.user.email, displayName: p.user.displayName });
  const next = location.pathname === "/signin" || location.pathname === "/signup" ? "/campaigns" : location.pathname;
  navigate(next, true);
}

export function SignIn() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const a = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<LogInMutation, LogInMutationVariables>(LOG_IN, { email, password });
      start(r.logIn);
    });
  };
  return (
    <main className="auth">
      <h1>Sign in to MAOSIC</h1>
      <form onSubmit={submit} className="card">
        <label>
          E-mail
          <input type="email" autoComplete="username" required value={email} onChange={(e) => setEmail(e.target.value)} />
        </label>
        <label>
          Password
          <input type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} />
        </label>
        <ErrorBox error={a.error} title="Sign-in failed" />
        <button type="submit" className="primary" disabled={a.busy}>{a.busy ? "Signing in…" : "Sign in"}</button>
        <p>New here? <Link to="/signup">Create an account</Link></p>
      </form>
    </main>
  );
}

export function SignUp() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [org, setOrg] = useState("");
  const [sent, setSent] = useState(false);
  const a = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      await gql<SignUpMutation, SignUpMutationVariables>(SIGN_UP, { email, password, displayName, org: org || null });
      setSent(true);
    });
  };
  if (sent) return <VerifyEmail email={email} />;
  return (
    <main className="auth">
      <h1>Create a MAOSIC account</h1>
      <form onSubmit={submit} className="card">
        <label>
          Name
          <input autoComplete="name" required value={displayName} onChange={(e) => setDisplayName(e.target.value)} />
        </label>
        <label>
          E-mail
          <input type="email" autoComplete="username" required value={email} onChange={(e) => setEmail(e.target.value)} />
        </label>
        <label>
          Password
          <input type="password" autoComplete="new-password" required minLength={10} value={password} onChange={(e) => setPassword(e.target.value)} aria-describedby="pw-hint" />
          <small id="pw-hint">At least 10 characters.</small>
        </label>
        <label>
          Organisation name <small>(optional; your own organisation)</small>
          <input value={org} onChange={(e) => setOrg(e.target.value)} />
        </label>
        <ErrorBox error={a.error} title="Sign-up failed" />
        <button type="submit" className="primary" disabled={a.busy}>{a.busy ? "Creating…" : "Create account"}</button>
        <p>Have an account? <Link to="/signin">Sign in</Link></p>
      </form>
    </main>
  );
}

/** The second step of sign-up: the token mailed to the address creates the account. */
function VerifyEmail({ email }: { email: string }) {
  const [token, setToken] = useState(() => new URLSearchParams(location.search).get("token") ?? "");
  const a = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<VerifyEmailMutation, VerifyEmailMutationVariables>(VERIFY_EMAIL, { token: token.trim() });
      start(r.verifyEmail);
    });
  };
  return (
    <main className="auth">
      <h1>Check your e-mail</h1>
      <form onSubmit={submit} className="card">
        <p role="status">
          We sent a verification code to <strong>{email}</strong>. (If the address already has an account, the mail says so
          instead: sign in.)
        </p>
        <label>
          Verification code
          <input required autoComplete="one-time-code" value={token} onChange={(e) => setToken(e.target.value)} />
        </label>
        <ErrorBox error={a.error} title="Verification failed" />
        <button type="submit" className="primary" disabled={a.busy}>{a.busy ? "Verifying…" : "Verify and sign in"}</button>
        <p>Have an account? <Link to="/signin">Sign in</Link></p>
      </form>
    </main>
  );
}
