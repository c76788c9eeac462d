import { useState, type FormEvent } from "react";
import { gql } from "../api";
import { useApp, useRole } from "../App";
import type {
  AcceptMutation, AcceptMutationVariables, CreateOrgMutation, CreateOrgMutationVariables, InviteMutation,
  InviteMutationVariables, OrgQuery, OrgQueryVariables, RemoveMemberMutation, RemoveMemberMutationVariables,
  SetRoleMutation, SetRoleMutationVariables, ShareLabMutation, ShareLabMutationVariables, UnshareLabMutation,
  UnshareLabMutationVariables,
} from "../generated/graphql";
import type { Role } from "../generated/schema";
import { ACCEPT, CREATE_ORG, INVITE, ORG, REMOVE_MEMBER, SET_ROLE, SHARE_LAB, UNSHARE_LAB } from "../ops";
import { CopyField, Empty, ErrorBox, fmtTime, Loading, useAction, useQuery } from "../ui";

const ROLES: Role[] = ["OWNER", "ADMIN", "RESEARCHER", "VIEWER"];

export function OrgPage() {
  const { orgId } = useApp();
  const role = useRole();
  const manager = role === "OWNER" || role === "ADMIN";
  const q = useQuery<OrgQuery, OrgQueryVariables>(ORG, { id: orgId }, [orgId], !orgId);
  const org = q.data?.organization;
  return (
    <>
      <h1>Organisation{org ? `: ${org.name}` : ""}</h1>
      {q.loading && <Loading what="the organisation" />}
      <ErrorBox error={q.error} />
      {org && (
        <>
          <p className="muted">
            Id <code data-testid="org-id">{org.id}</code> · created {fmtTime(org.createdAt)} · your role {role?.toLowerCase()}
          </p>
          <section className="card">
            <h2>Members</h2>
            <Members org={org} manager={manager} reload={q.reload} />
          </section>
          {manager && (
            <section className="card">
              <h2>Invite a member</h2>
              <Invite orgId={org.id} ownerCanInvite={role === "OWNER"} />
            </section>
          )}
          <section className="card">
            <h2>Lab sharing</h2>
            <Sharing org={org} reload={q.reload} />
          </section>
        </>
      )}
      <div className="grid2">
        <section className="card">
          <h2>Accept an invitation</h2>
          <AcceptInvitation />
        </section>
        <section className="card">
          <h2>New organisation</h2>
          <CreateOrg />
        </section>
      </div>
    </>
  );
}

type Org = NonNullable<OrgQuery["organization"]>;

function Members({ org, manager, reload }: { org: Org; manager: boolean; reload: () => Promise<void> }) {
  const { me } = useApp();
  const a = useAction();
  return (
    <>
      <ErrorBox error={a.error} />
      <table>
        <thead>
          <tr><th>Name</th><th>E-mail</th><th>Role</th>{manager && <th><span className="sr-only">Actions</span></th>}</tr>
        </thead>
        <tbody>
          {org.members.map((m) => (
            <tr key={m.userId}>
              <td>{m.displayName}</td>
              <td>{m.email}</td>
              <td>
                {manager && m.userId !== me.id ? (
                  <select
                    aria-label={`Role of ${m.email}`}
                    value={m.role}
                    disabled={a.busy}
                    onChange={(e) =>
                      void a.run(async () => {
                        await gql<SetRoleMutation, SetRoleMutationVariables>(SET_ROLE, { org: org.id, user: m.userId, role: e.target.value as Role });
                        await reload();
                      })
                    }
                  >
                    {ROLES.map((r) => <option key={r} value={r}>{r.toLowerCase()}</option>)}
                  </select>
                ) : (
                  m.role.toLowerCase()
                )}
              </td>
              {manager && (
                <td>
                  {m.userId !== me.id && (
                    <button
                      type="button"
                      disabled={a.busy}
                      onClick={() =>
                        void a.run(async () => {
                          await gql<RemoveMemberMutation, RemoveMemberMutationVariables>(REMOVE_MEMBER, { org: org.id, user: m.userId });
                          await reload();
                        })
                      }
                    >
                      Remove
                    </button>
                  )}
                </td>
              )}
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function Invite({ orgId, ownerCanInvite }: { orgId: string; ownerCanInvite: boolean }) {
  const [email, setEmail] = useState("");
  const [role, setRole] = useState<Role>("RESEARCHER");
  const [token, setToken] = useState<{ email: string; token: string } | null>(null);
  const a = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<InviteMutation, InviteMutationVariables>(INVITE, { org: orgId, email, role });
      setToken({ email: r.inviteMember.invitation.email, token: r.inviteMember.token });
      setEmail("");
    });
  };
  return (
    <form onSubmit={submit} className="row">
      <label>
        E-mail
        <input type="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
      </label>
      <label>
        Role
        <select value={role} onChange={(e) => setRole(e.target.value as Role)}>
          {ROLES.filter((r) => ownerCanInvite || r !== "OWNER").map((r) => <option key={r} value={r}>{r.toLowerCase()}</option>)}
        </select>
      </label>
      <button type="submit" disabled={a.busy}>Invite</button>
      <ErrorBox error={a.error} title="Invitation failed" />
      {token && (
        <div className="secret" data-testid="invitation">
          <p>Invitation for <strong>{token.email}</strong>. Hand them this token; it is shown only once:</p>
          <CopyField label="Invitation token" value={token.token} testid="invitation-token" />
        </div>
      )}
    </form>
  );
}

function AcceptInvitation() {
  const { reloadMe, setOrgId } = useApp();
  const [token, setToken] = useState("");
  const [done, setDone] = useState<string | null>(null);
  const a = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<AcceptMutation, AcceptMutationVariables>(ACCEPT, { token: token.trim() });
      setToken("");
      await reloadMe();
      setOrgId(r.acceptInvitation.id);
      setDone(r.acceptInvitation.name);
    });
  };
  return (
    <form onSubmit={submit}>
      <label>
        Invitation token
        <input required value={token} onChange={(e) => setToken(e.target.value)} autoComplete="off" />
      </label>
      <button type="submit" disabled={a.busy}>Accept</button>
      <ErrorBox error={a.error} title="Cannot accept" />
      {done && <p role="status">You joined {done}.</p>}
    </form>
  );
}

function CreateOrg() {
  const { reloadMe, setOrgId } = useApp();
  const [name, setName] = useState("");
  const a = useAction();
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      const r = await gql<CreateOrgMutation, CreateOrgMutationVariables>(CREATE_ORG, { name });
      setName("");
      await reloadMe();
      setOrgId(r.createOrganization.id);
    });
  };
  return (
    <form onSubmit={submit}>
      <label>
        Name
        <input required value={name} onChange={(e) => setName(e.target.value)} />
      </label>
      <button type="submit" disabled={a.busy}>Create organisation</button>
      <ErrorBox error={a.error} />
    </form>
  );
}

function Sharing({ org, reload }: { org: Org; reload: () => Promise<void> }) {
  const managed = org.labs.filter((l) => l.canManage);
  const [lab, setLab] = useState("");
  const [target, setTarget] = useState("");
  const [quota, setQuota] = useState(50);
  const a = useAction();
  const labId = lab || managed[0]?.id || "";
  const submit = (e: FormEvent) => {
    e.preventDefault();
    void a.run(async () => {
      await gql<ShareLabMutation, ShareLabMutationVariables>(SHARE_LAB, { lab: labId, org: target.trim(), quota });
      setTarget("");
      await reload();
    });
  };
  const unshare = (l: string, o: string) =>
    void a.run(async () => {
      await gql<UnshareLabMutation, UnshareLabMutationVariables>(UNSHARE_LAB, { lab: l, org: o });
      await reload();
    });
  return (
    <>
      <h3>Our labs shared with others</h3>
      {managed.every((l) => l.shares.length === 0) ? (
        <Empty>None of this organisation's labs is shared.</Empty>
      ) : (
        <table>
          <thead><tr><th>Lab</th><th>Organisation</th><th>Daily quota</th><th>Since</th><th><span className="sr-only">Actions</span></th></tr></thead>
          <tbody>
            {managed.flatMap((l) =>
              l.shares.map((s) => (
                <tr key={l.id + s.organizationId}>
                  <td>{l.name}</td><td><code>{s.organizationId}</code></td><td>{s.dailyQuota}</td><td>{fmtTime(s.createdAt)}</td>
                  <td><button type="button" onClick={() => unshare(l.id, s.organizationId)} disabled={a.busy}>Stop sharing</button></td>
                </tr>
              )),
            )}
          </tbody>
        </table>
      )}
      {managed.length > 0 && (
        <form onSubmit={submit} className="row">
          <label>
            Lab
            <select value={labId} onChange={(e) => setLab(e.target.value)}>
              {managed.map((l) => <option key={l.id} value={l.id}>{l.name}</option>)}
            </select>
          </label>
          <label>
            Organisation id
            <input required value={target} onChange={(e) => setTarget(e.target.value)} placeholder="the other organisation's id" />
          </label>
          <label>
            Experiments per day
            <input type="number" min={1} required value={quota} onChange={(e) => setQuota(Number(e.target.value))} />
          </label>
          <button type="submit" disabled={a.busy}>Share lab</button>
        </form>
      )}
      <ErrorBox error={a.error} />
      <h3>Labs shared with us</h3>
      {org.sharedLabs.length === 0 ? (
        <Empty>No other organisation shares a lab with this one.</Empty>
      ) : (
        <ul>
          {org.sharedLabs.map((s) => (
            <li key={s.labId}>Lab <code>{s.labId}</code>: {s.dailyQuota} experiments a day (since {fmtTime(s.createdAt)})</li>
          ))}
        </ul>
      )}
    </>
  );
}
