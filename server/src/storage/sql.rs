//! The SQL both backends share, as one macro that implements [`super::Storage`] for a pool type.
//! SQLite and PostgreSQL both accept `$n` placeholders, `RETURNING`, `TRUE`/`FALSE`, and decode
//! our column types (TEXT, 64-bit integers, booleans) the same way, so the text is identical.

macro_rules! impl_storage {
    ($ty:ident, $backend:expr, $migrator:expr) => {
        #[async_trait::async_trait]
        impl $crate::storage::Storage for $ty {
            fn backend(&self) -> $crate::storage::Backend {
                $backend
            }

            async fn migrate(&self) -> $crate::storage::StorageResult<()> {
                $migrator.run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> $crate::storage::StorageResult<()> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                Ok(())
            }

            async fn create_organization(
                &self,
                name: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::Organization> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::Organization> = async {
                    sqlx::query_as(
                        "INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3) \
                         RETURNING id, name, created_at",
                    )
                    .bind($crate::storage::new_id())
                    .bind(name)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn organization(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<$crate::storage::Organization> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::Organization> = async {
                    sqlx::query_as("SELECT id, name, created_at FROM organizations WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?
                        .ok_or($crate::storage::StorageError::NotFound)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn organization_by_name(
                &self,
                name: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::Organization>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::Organization>> = async {
                    sqlx::query_as(
                        "SELECT id, name, created_at FROM organizations WHERE name = $1 \
                         ORDER BY created_at, id LIMIT 1",
                    )
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_user(
                &self,
                email: &str,
                display_name: &str,
                password_hash: Option<&str>,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::User> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::User> = async {
                    sqlx::query_as(
                        "INSERT INTO users (id, email, display_name, password_hash, created_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         RETURNING id, email, display_name, password_hash, created_at",
                    )
                    .bind($crate::storage::new_id())
                    .bind(email.trim().to_lowercase())
                    .bind(display_name)
                    .bind(password_hash)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn user_by_email(
                &self,
                email: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::User>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::User>> = async {
                    sqlx::query_as(
                        "SELECT id, email, display_name, password_hash, created_at FROM users \
                         WHERE email = $1",
                    )
                    .bind(email.trim().to_lowercase())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn set_membership(
                &self,
                organization_id: &str,
                user_id: &str,
                role: $crate::storage::Role,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<()> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<()> = async {
                    sqlx::query(
                        "INSERT INTO memberships (organization_id, user_id, role, created_at) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (organization_id, user_id) DO UPDATE SET role = excluded.role",
                    )
                    .bind(organization_id)
                    .bind(user_id)
                    .bind(role.as_str())
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(())
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn memberships_of_user(
                &self,
                user_id: &str,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::Membership>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::Membership>> = async {
                    let rows: Vec<(String, String, String)> = sqlx::query_as(
                        "SELECT organization_id, user_id, role FROM memberships \
                         WHERE user_id = $1 ORDER BY created_at, organization_id",
                    )
                    .bind(user_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    rows.into_iter()
                        .map(|(organization_id, user_id, role)| {
                            let role = $crate::storage::Role::parse(&role).ok_or_else(|| {
                                $crate::storage::StorageError::Corrupt(format!("unknown role {role:?}"))
                            })?;
                            Ok($crate::storage::Membership {
                                organization_id,
                                user_id,
                                role,
                            })
                        })
                        .collect()
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_lab(
                &self,
                organization_id: &str,
                name: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::Lab> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::Lab> = async {
                    sqlx::query_as(concat!(
                        "INSERT INTO labs (id, organization_id, name, created_at) \
                         VALUES ($1, $2, $3, $4) RETURNING ",
                        $crate::storage::sql::LAB_COLUMNS!()
                    ))
                    .bind($crate::storage::new_id())
                    .bind(organization_id)
                    .bind(name)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn lab(&self, id: &str) -> $crate::storage::StorageResult<$crate::storage::Lab> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::Lab> = async {
                    sqlx::query_as(concat!(
                        "SELECT ",
                        $crate::storage::sql::LAB_COLUMNS!(),
                        " FROM labs WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?
                    .ok_or($crate::storage::StorageError::NotFound)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn labs_of_organization(
                &self,
                organization_id: &str,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::Lab>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::Lab>> = async {
                    sqlx::query_as(concat!(
                        "SELECT ",
                        $crate::storage::sql::LAB_COLUMNS!(),
                        " FROM labs WHERE organization_id = $1 ORDER BY name, id"
                    ))
                    .bind(organization_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_agent_credential(
                &self,
                lab_id: &str,
                secret_hash: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::AgentCredential> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::AgentCredential> = async {
                    sqlx::query_as(
                        "INSERT INTO agent_credentials (id, lab_id, secret_hash, created_at) \
                         VALUES ($1, $2, $3, $4) \
                         RETURNING id, lab_id, secret_hash, created_at, revoked_at",
                    )
                    .bind($crate::storage::new_id())
                    .bind(lab_id)
                    .bind(secret_hash)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn agent_credential(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::AgentCredential>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::AgentCredential>> = async {
                    sqlx::query_as(
                        "SELECT id, lab_id, secret_hash, created_at, revoked_at \
                         FROM agent_credentials WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn revoke_agent_credential(
                &self,
                id: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE agent_credentials SET revoked_at = $2 \
                         WHERE id = $1 AND revoked_at IS NULL",
                    )
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn agent_connected(
                &self,
                lab_id: &str,
                hello: &$crate::storage::AgentHello,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<i64> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<i64> = async {
                    let (generation,): (i64,) = sqlx::query_as(
                        "UPDATE labs SET connection_generation = connection_generation + 1, \
                         online = TRUE, last_seen_at = $2, agent_version = $3, devices = $4, \
                         descriptor = $5 WHERE id = $1 RETURNING connection_generation",
                    )
                    .bind(lab_id)
                    .bind(now_ms)
                    .bind(&hello.agent_version)
                    .bind(&hello.devices_json)
                    .bind(hello.descriptor_json.as_deref())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?
                    .ok_or($crate::storage::StorageError::NotFound)?;
                    Ok(generation)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn agent_seen(
                &self,
                lab_id: &str,
                generation: i64,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE labs SET last_seen_at = $3 \
                         WHERE id = $1 AND connection_generation = $2",
                    )
                    .bind(lab_id)
                    .bind(generation)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn agent_disconnected(
                &self,
                lab_id: &str,
                generation: i64,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE labs SET online = FALSE, last_seen_at = $3 \
                         WHERE id = $1 AND connection_generation = $2 AND online = TRUE",
                    )
                    .bind(lab_id)
                    .bind(generation)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn append_audit(
                &self,
                entry: &$crate::storage::NewAuditEntry,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<i64> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<i64> = async {
                    let (id,): (i64,) = sqlx::query_as(
                        "INSERT INTO audit_log \
                         (organization_id, actor, action, target, detail, source, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    )
                    .bind(entry.organization_id.as_deref())
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.target)
                    .bind(entry.detail.to_string())
                    .bind(entry.source.as_deref())
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(id)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn audit_of_organization(
                &self,
                organization_id: &str,
                limit: i64,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::AuditEntry>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::AuditEntry>> = async {
                    sqlx::query_as(
                        "SELECT id, organization_id, actor, action, target, detail, source, created_at \
                         FROM audit_log WHERE organization_id = $1 ORDER BY id DESC LIMIT $2",
                    )
                    .bind(organization_id)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn user(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::User>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::User>> = async {
                    sqlx::query_as(
                        "SELECT id, email, display_name, password_hash, created_at FROM users \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn set_password_hash(
                &self,
                user_id: &str,
                password_hash: &str,
            ) -> $crate::storage::StorageResult<()> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<()> = async {
                    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                        .bind(user_id)
                        .bind(password_hash)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(())
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn memberships_of_organization(
                &self,
                organization_id: &str,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::Membership>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::Membership>> = async {
                    let rows: Vec<(String, String, String)> = sqlx::query_as(
                        "SELECT organization_id, user_id, role FROM memberships \
                         WHERE organization_id = $1 ORDER BY created_at, user_id",
                    )
                    .bind(organization_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    rows.into_iter()
                        .map(|(organization_id, user_id, role)| {
                            let role = $crate::storage::Role::parse(&role).ok_or_else(|| {
                                $crate::storage::StorageError::Corrupt(format!("unknown role {role:?}"))
                            })?;
                            Ok($crate::storage::Membership {
                                organization_id,
                                user_id,
                                role,
                            })
                        })
                        .collect()
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn remove_membership(
                &self,
                organization_id: &str,
                user_id: &str,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2",
                    )
                    .bind(organization_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_session(
                &self,
                user_id: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::Session> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::Session> = async {
                    sqlx::query_as(
                        "INSERT INTO sessions (id, user_id, created_at) VALUES ($1, $2, $3) \
                         RETURNING id, user_id, created_at, revoked_at",
                    )
                    .bind($crate::storage::new_id())
                    .bind(user_id)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn session(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::Session>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::Session>> = async {
                    sqlx::query_as(
                        "SELECT id, user_id, created_at, revoked_at FROM sessions WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn revoke_session(
                &self,
                id: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    )
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn revoke_sessions_of_user(
                &self,
                user_id: &str,
                keep: Option<&str>,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<u64> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<u64> = async {
                    let done = sqlx::query(
                        "UPDATE sessions SET revoked_at = $2 \
                         WHERE user_id = $1 AND revoked_at IS NULL AND id <> $3",
                    )
                    .bind(user_id)
                    .bind(now_ms)
                    .bind(keep.unwrap_or(""))
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected())
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_refresh_token(
                &self,
                session_id: &str,
                token_hash: &str,
                expires_at: i64,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::RefreshToken> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::RefreshToken> = async {
                    sqlx::query_as(
                        "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         RETURNING id, session_id, token_hash, created_at, expires_at, used_at",
                    )
                    .bind($crate::storage::new_id())
                    .bind(session_id)
                    .bind(token_hash)
                    .bind(now_ms)
                    .bind(expires_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn refresh_token(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::RefreshToken>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::RefreshToken>> = async {
                    sqlx::query_as(
                        "SELECT id, session_id, token_hash, created_at, expires_at, used_at \
                         FROM refresh_tokens WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn use_refresh_token(
                &self,
                id: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE refresh_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
                    )
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_api_token(
                &self,
                user_id: &str,
                organization_id: &str,
                name: &str,
                scope: &str,
                token_hash: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::ApiToken> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::ApiToken> = async {
                    sqlx::query_as(
                        "INSERT INTO api_tokens \
                         (id, user_id, organization_id, name, scope, token_hash, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         RETURNING id, user_id, organization_id, name, scope, token_hash, \
                         created_at, revoked_at",
                    )
                    .bind($crate::storage::new_id())
                    .bind(user_id)
                    .bind(organization_id)
                    .bind(name)
                    .bind(scope)
                    .bind(token_hash)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn api_token(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::ApiToken>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::ApiToken>> = async {
                    sqlx::query_as(
                        "SELECT id, user_id, organization_id, name, scope, token_hash, created_at, \
                         revoked_at FROM api_tokens WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn api_tokens_of_user(
                &self,
                user_id: &str,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::ApiToken>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::ApiToken>> = async {
                    sqlx::query_as(
                        "SELECT id, user_id, organization_id, name, scope, token_hash, created_at, \
                         revoked_at FROM api_tokens WHERE user_id = $1 ORDER BY created_at DESC, id",
                    )
                    .bind(user_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn revoke_api_token(
                &self,
                id: &str,
                user_id: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE api_tokens SET revoked_at = $3 \
                         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                    )
                    .bind(id)
                    .bind(user_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_invitation(
                &self,
                invitation: &$crate::storage::Invitation,
            ) -> $crate::storage::StorageResult<()> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<()> = async {
                    sqlx::query(
                        "INSERT INTO invitations (id, organization_id, email, role, token_hash, \
                         created_by, created_at, expires_at, accepted_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(&invitation.id)
                    .bind(&invitation.organization_id)
                    .bind(invitation.email.trim().to_lowercase())
                    .bind(&invitation.role)
                    .bind(&invitation.token_hash)
                    .bind(&invitation.created_by)
                    .bind(invitation.created_at)
                    .bind(invitation.expires_at)
                    .bind(invitation.accepted_at)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(())
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn invitation(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::Invitation>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::Invitation>> = async {
                    sqlx::query_as(
                        "SELECT id, organization_id, email, role, token_hash, created_by, \
                         created_at, expires_at, accepted_at FROM invitations WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn accept_invitation(
                &self,
                id: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE invitations SET accepted_at = $2 \
                         WHERE id = $1 AND accepted_at IS NULL AND expires_at > $2",
                    )
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn share_lab(
                &self,
                lab_id: &str,
                organization_id: &str,
                daily_quota: i64,
                rights: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::LabShare> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::LabShare> = async {
                    sqlx::query_as(
                        "INSERT INTO lab_shares (lab_id, organization_id, daily_quota, created_at, rights) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (lab_id, organization_id) \
                         DO UPDATE SET daily_quota = excluded.daily_quota, rights = excluded.rights \
                         RETURNING lab_id, organization_id, daily_quota, created_at, rights",
                    )
                    .bind(lab_id)
                    .bind(organization_id)
                    .bind(daily_quota)
                    .bind(now_ms)
                    .bind(rights)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn unshare_lab(
                &self,
                lab_id: &str,
                organization_id: &str,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "DELETE FROM lab_shares WHERE lab_id = $1 AND organization_id = $2",
                    )
                    .bind(lab_id)
                    .bind(organization_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn shares_of_lab(
                &self,
                lab_id: &str,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::LabShare>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::LabShare>> = async {
                    sqlx::query_as(
                        "SELECT lab_id, organization_id, daily_quota, created_at, rights FROM lab_shares \
                         WHERE lab_id = $1 ORDER BY created_at, organization_id",
                    )
                    .bind(lab_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn shares_with_organization(
                &self,
                organization_id: &str,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::LabShare>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::LabShare>> = async {
                    sqlx::query_as(
                        "SELECT lab_id, organization_id, daily_quota, created_at, rights FROM lab_shares \
                         WHERE organization_id = $1 ORDER BY created_at, lab_id",
                    )
                    .bind(organization_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn create_enrollment_token(
                &self,
                lab_id: &str,
                token_hash: &str,
                expires_at: i64,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<$crate::storage::EnrollmentToken> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<$crate::storage::EnrollmentToken> = async {
                    sqlx::query_as(
                        "INSERT INTO enrollment_tokens (id, lab_id, token_hash, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         RETURNING id, lab_id, token_hash, created_at, expires_at, used_at",
                    )
                    .bind($crate::storage::new_id())
                    .bind(lab_id)
                    .bind(token_hash)
                    .bind(now_ms)
                    .bind(expires_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn enrollment_token(
                &self,
                id: &str,
            ) -> $crate::storage::StorageResult<Option<$crate::storage::EnrollmentToken>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Option<$crate::storage::EnrollmentToken>> = async {
                    sqlx::query_as(
                        "SELECT id, lab_id, token_hash, created_at, expires_at, used_at \
                         FROM enrollment_tokens WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn use_enrollment_token(
                &self,
                id: &str,
                now_ms: i64,
            ) -> $crate::storage::StorageResult<bool> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<bool> = async {
                    let done = sqlx::query(
                        "UPDATE enrollment_tokens SET used_at = $2 \
                         WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
                    )
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)?;
                    Ok(done.rows_affected() == 1)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }

            async fn agent_credentials_of_lab(
                &self,
                lab_id: &str,
            ) -> $crate::storage::StorageResult<Vec<$crate::storage::AgentCredential>> {
                let mut tx = Self::scoped_tx(&self.pool).await?;
                let result: $crate::storage::StorageResult<Vec<$crate::storage::AgentCredential>> = async {
                    sqlx::query_as(
                        "SELECT id, lab_id, secret_hash, created_at, revoked_at \
                         FROM agent_credentials WHERE lab_id = $1 ORDER BY created_at DESC, id",
                    )
                    .bind(lab_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::storage::StorageError::from_sqlx)
                }
                .await;
                if result.is_ok() {
                    tx.commit()
                        .await
                        .map_err($crate::storage::StorageError::from_sqlx)?;
                }
                result
            }
        }
    };
}

/// The columns of a [`super::Lab`] row, in struct order.
macro_rules! LAB_COLUMNS {
    () => {
        "id, organization_id, name, created_at, connection_generation, online, last_seen_at, \
         agent_version, devices, descriptor"
    };
}

pub(crate) use impl_storage;
pub(crate) use LAB_COLUMNS;
