import { useState, type FormEvent } from "react";
import { gql } from "../api";
import { useApp } from "../App";
import type {
  ApiTokensQuery, CreateApiTokenMutation, CreateApiTokenMutationVariables, RevokeApiTokenMutation,
  RevokeApiTokenMutationVariables,
} from "../generated/graphql";
import type { TokenScope } from "../generated/schema";
import { API_TOKENS, CREATE_API_TOKEN, REVOKE_API_TOKEN } from "../ops";
import { CopyField, Empty, ErrorBox, fmtTime, Loading, useAction, useQuery } from "../ui";

export function TokensPage() {
  const { me, orgId } = useApp();
  const q = useQuery<ApiTokensQuery, Record<string, never>>(API_TOKENS, {}, []);
  const [name, setName] = useState("");
  const [scope, setScope] = useState<TokenScope>("READ");
  const [org, setOrg] = useState("");
  const [secret, setSecret] = useState<{ name: string; token: string } | null>(null);
  const a = useAction();
  const orgName = (id: string) => me.memberships.find((m) => m.organization.id === id)?.organization.name ?? id;
  const create = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<CreateApiTokenMutation, CreateApiTokenMutationVariables>(CREATE_API_TOKEN, { org: org || orgId, name, scope });
      setSecret({ name: r.createApiToken.apiToken.name, token: r.createApiToken.token });
      setName("");
      await q.reload();
    });
  };
  const revoke = (id: string) =>
    void a.run(async () => {
      await gql<RevokeApiTokenMutation, RevokeApiTokenMutationVariables>(REVOKE_API_TOKEN, { id });
      await q.reload();
    });
  return (
    <>
      <h1>API tokens</h1>
      <p className="muted">For notebooks and scripts: send <code>Authorization: Bearer &lt;token&gt;</code> to <code>{location.origin}/graphql</code>. A token acts in one organisation, within your role there.</p>
      <form onSubmit={create} className="card row">
        <label>
          Name
          <input required value={name} onChange={(e) => setName(e.target.value)} placeholder="analysis notebook" />
        </label>
        <label>
          Organisation
          <select value={org || orgId} onChange={(e) => setOrg(e.target.value)}>
            {me.memberships.map((m) => <option key={m.organization.id} value={m.organization.id}>{m.organization.name}</option>)}
          </select>
        </label>
        <label>
          Scope
          <select value={scope} onChange={(e) => setScope(e.target.value as TokenScope)}>
            <option value="READ">read (queries only)</option>
            <option value="WRITE">write (queries and mutations)</option>
          </select>
        </label>
        <button type="submit" className="primary" disabled={a.busy}>Create token</button>
      </form>
      {secret && (
        <div className="secret card" data-testid="new-token" role="status">
          <p>Token <strong>{secret.name}</strong> created. Copy it now: it is shown only once.</p>
          <CopyField label="Secret" value={secret.token} testid="token-secret" />
          <button type="button" onClick={() => setSecret(null)}>I have copied it</button>
        </div>
      )}
      <ErrorBox error={a.error} />
      {q.loading && <Loading what="tokens" />}
      <ErrorBox error={q.error} />
      {q.data && q.data.apiTokens.length === 0 && <Empty>No API tokens yet.</Empty>}
      {q.data && q.data.apiTokens.length > 0 && (
        <table data-testid="tokens-table">
          <thead><tr><th>Name</th><th>Organisation</th><th>Scope</th><th>Created</th><th>Status</th><th><span className="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {q.data.apiTokens.map((t) => (
              <tr key={t.id}>
                <td>{t.name}</td>
                <td>{orgName(t.organizationId)}</td>
                <td>{t.scope.toLowerCase()}</td>
                <td>{fmtTime(t.createdAt)}</td>
                <td>{t.revokedAt ? `revoked ${fmtTime(t.revokedAt)}` : "active"}</td>
                <td>{!t.revokedAt && <button type="button" onClick={() => revoke(t.id)} disabled={a.busy} aria-label={`Revoke ${t.name}`}>Revoke</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
