-- Row-level security: a second fence behind the resolvers' checks (RELIABILITY rule 7).
-- A principal's storage calls run as the non-owner role maosic_app (SET LOCAL role in each
-- transaction) with the tenant in transaction-local settings maosic.*; platform work (agent
-- gateway, admin CLI, token exchanges) sets maosic.bypass = 'on'. FORCE makes the policies
-- bind the table owner too; without any setting nothing is visible.
-- Roles are cluster-wide: several databases may migrate at once, so a concurrent creation
-- is not an error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'maosic_app') THEN
        CREATE ROLE maosic_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;
DO $$
BEGIN
    EXECUTE format('GRANT maosic_app TO %I', current_user);
EXCEPTION WHEN others THEN
    NULL; -- already a member, or a superuser (may SET ROLE to anyone)
END $$;

GRANT USAGE ON SCHEMA public TO maosic_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO maosic_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO maosic_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO maosic_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO maosic_app;

CREATE FUNCTION maosic_bypass() RETURNS boolean LANGUAGE sql STABLE AS
$$ SELECT coalesce(current_setting('maosic.bypass', true), '') = 'on' $$;
CREATE FUNCTION maosic_setting_list(name text) RETURNS text[] LANGUAGE sql STABLE AS
$$ SELECT string_to_array(coalesce(nullif(current_setting(name, true), ''), ''), ',') $$;
CREATE FUNCTION maosic_user() RETURNS text LANGUAGE sql STABLE AS
$$ SELECT coalesce(current_setting('maosic.user_id', true), '') $$;

-- organizations: members read; creation is platform work (sign-up, createOrganization).
ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE organizations FORCE ROW LEVEL SECURITY;
CREATE POLICY organizations_read ON organizations FOR SELECT
    USING (maosic_bypass() OR id = ANY (maosic_setting_list('maosic.org_ids')));
CREATE POLICY organizations_write ON organizations FOR ALL
    USING (maosic_bypass() OR id = ANY (maosic_setting_list('maosic.admin_org_ids')))
    WITH CHECK (maosic_bypass() OR id = ANY (maosic_setting_list('maosic.admin_org_ids')));

-- memberships: members read their organisations' members; owners and admins change them.
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY memberships_read ON memberships FOR SELECT
    USING (maosic_bypass() OR user_id = maosic_user()
           OR organization_id = ANY (maosic_setting_list('maosic.org_ids')));
CREATE POLICY memberships_write ON memberships FOR ALL
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.admin_org_ids')))
    WITH CHECK (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.admin_org_ids')));

-- labs: own organisations' labs and labs shared with them are visible; only owners and admins
-- of the owning organisation write (agent presence is platform work).
ALTER TABLE labs ENABLE ROW LEVEL SECURITY;
ALTER TABLE labs FORCE ROW LEVEL SECURITY;
CREATE POLICY labs_read ON labs FOR SELECT
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids'))
           OR id = ANY (maosic_setting_list('maosic.lab_ids')));
CREATE POLICY labs_write ON labs FOR ALL
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.admin_org_ids')))
    WITH CHECK (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.admin_org_ids')));

-- lab_shares: the sharing organisation's admins manage them; the receiving organisation reads
-- its own grants.
ALTER TABLE lab_shares ENABLE ROW LEVEL SECURITY;
ALTER TABLE lab_shares FORCE ROW LEVEL SECURITY;
CREATE POLICY lab_shares_read ON lab_shares FOR SELECT
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.org_ids'))
           OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))));
CREATE POLICY lab_shares_write ON lab_shares FOR ALL
    USING (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))))
    WITH CHECK (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))));

-- agent credentials and enrollment tokens: the lab's managers only.
ALTER TABLE agent_credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_credentials FORCE ROW LEVEL SECURITY;
CREATE POLICY agent_credentials_all ON agent_credentials FOR ALL
    USING (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))))
    WITH CHECK (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))));
ALTER TABLE enrollment_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE enrollment_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY enrollment_tokens_all ON enrollment_tokens FOR ALL
    USING (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))))
    WITH CHECK (maosic_bypass() OR lab_id IN (SELECT id FROM labs
                         WHERE organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))));

-- invitations: the organisation's owners and admins (acceptance is token-proved platform work).
ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY invitations_all ON invitations FOR ALL
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.admin_org_ids')))
    WITH CHECK (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.admin_org_ids')));

-- audit_log: owners and admins read (and everyone their own entries, which INSERT ... RETURNING
-- needs); anyone acting appends; nobody edits.
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_log_read ON audit_log FOR SELECT
    USING (maosic_bypass() OR organization_id = ANY (maosic_setting_list('maosic.admin_org_ids'))
           OR actor = 'user:' || maosic_user());
CREATE POLICY audit_log_append ON audit_log FOR INSERT WITH CHECK (true);
CREATE POLICY audit_log_platform ON audit_log FOR UPDATE USING (maosic_bypass());
CREATE POLICY audit_log_platform_delete ON audit_log FOR DELETE USING (maosic_bypass());

-- api_tokens: their owner, and only for organisations the owner belongs to.
ALTER TABLE api_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY api_tokens_all ON api_tokens FOR ALL
    USING (maosic_bypass() OR user_id = maosic_user())
    WITH CHECK (maosic_bypass() OR (user_id = maosic_user()
                AND organization_id = ANY (maosic_setting_list('maosic.org_ids'))));
