"""The MAOSIC GraphQL client: queries and mutations over HTTP (httpx), subscriptions over
graphql-ws (``graphql-transport-ws`` protocol, websockets), results as typed dataclasses and
pandas DataFrames."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator, Mapping, Optional

import httpx
import pandas as pd
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from .models import (
    FEATURES_GRAPHQL,
    FITTED_PEAKS_GRAPHQL,
    Campaign,
    CampaignEvent,
    CampaignState,
    Experiment,
    ExperimentState,
    Features,
    Lab,
    LabCommand,
    ObjectiveDirection,
    TokenScope,
    User,
)

CAMPAIGN_FIELDS = """
  id name organizationId labId state stateDetail objective objectiveDirection optimizer budget
  proposals results bestValue bestParameters { name value } parameters { name lower upper step }
"""
EXPERIMENT_FIELDS = f"""
  id campaignId seq name source state parameters {{ name value }} objectiveValue
  {FEATURES_GRAPHQL} {FITTED_PEAKS_GRAPHQL} error queuedAt finishedAt
"""
LAB_FIELDS = "id name organizationId online"
COMMAND_FIELDS = "id labId method params state result error"


class MaosicError(Exception):
    """An error answered by the server. ``code`` is the stable machine-readable code
    (``UNAUTHENTICATED``, ``FORBIDDEN``, ``NOT_FOUND``, ``BAD_USER_INPUT``, …) when there is one."""

    def __init__(self, message: str, code: Optional[str] = None, errors: Any = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.message = message
        self.code = code
        self.errors = errors


def _rate_limit_wait(r: httpx.Response, body: Any) -> Optional[float]:
    """Seconds to wait before sending a ``RATE_LIMITED`` query again (None: not rate-limited)."""
    if r.status_code != 429:
        return None
    try:
        ms = body["errors"][0]["extensions"]["retryAfterMs"]
        return max(float(ms) / 1000.0, 0.01)
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    try:
        return max(float(r.headers.get("retry-after", "1")), 0.01)
    except ValueError:
        return 1.0


class Client:
    """A session with one MAOSIC server.

    >>> c = Client.login("http://127.0.0.1:8080", "me@example.org", "secret")   # doctest: +SKIP
    >>> c = Client("http://127.0.0.1:8080", token="mst_...")                      # doctest: +SKIP

    ``token`` is an access token from ``login``/``sign_up`` or an API token
    (``create_api_token``); it is sent as ``Authorization: Bearer``.

    The server gives each caller a budget of query bytes per second; a caller over it gets
    ``RATE_LIMITED`` with the time after which the query fits. The client waits that long and
    sends the query again, for at most ``rate_limit_wait`` seconds in all per call (0: never
    wait, raise :class:`MaosicError` with code ``RATE_LIMITED`` at once).
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        rate_limit_wait: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.rate_limit_wait = rate_limit_wait
        self._http = httpx.Client(timeout=timeout)

    # --- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, query: str, variables: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """Runs one query or mutation; returns ``data`` or raises :class:`MaosicError`."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        waited = 0.0
        while True:
            r = self._http.post(
                f"{self.url}/graphql",
                json={"query": query, "variables": dict(variables or {})},
                headers=headers,
            )
            try:
                body = r.json()
            except ValueError:
                raise MaosicError(f"HTTP {r.status_code}: {r.text[:200]}") from None
            wait = _rate_limit_wait(r, body)
            if wait is None or waited + wait > self.rate_limit_wait:
                break
            time.sleep(wait)
            waited += wait
        errors = body.get("errors")
        if errors:
            first = errors[0]
            code = (first.get("extensions") or {}).get("code")
            raise MaosicError(first.get("message", "error"), code, errors)
        if r.status_code >= 400 or body.get("data") is None:
            raise MaosicError(f"HTTP {r.status_code}: {r.text[:200]}")
        data: dict[str, Any] = body["data"]
        return data

    # --- accounts -------------------------------------------------------------------------

    @classmethod
    def login(cls, url: str, email: str, password: str, **kw: Any) -> "Client":
        """Logs in with a password and returns a client holding the access token."""
        c = cls(url, **kw)
        d = c.execute(
            "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { accessToken } }",
            {"e": email, "p": password},
        )
        c.token = d["logIn"]["accessToken"]
        return c

    @classmethod
    def sign_up(
        cls,
        url: str,
        email: str,
        password: str,
        display_name: str,
        organization_name: Optional[str] = None,
        **kw: Any,
    ) -> None:
        """Asks for an account (and its own organisation). The server answers the same for new
        and registered addresses and mails a verification token to a new one: pass it to
        :meth:`verify_email` to create the account and log in."""
        c = cls(url, **kw)
        c.execute(
            "mutation($e: String!, $p: String!, $n: String!, $o: String) {"
            " signUp(email: $e, password: $p, displayName: $n, organizationName: $o) }",
            {"e": email, "p": password, "n": display_name, "o": organization_name},
        )

    @classmethod
    def verify_email(cls, url: str, token: str, **kw: Any) -> "Client":
        """Completes a sign-up with the mailed token; returns a logged-in client."""
        c = cls(url, **kw)
        d = c.execute(
            "mutation($t: String!) { verifyEmail(token: $t) { accessToken } }", {"t": token}
        )
        c.token = d["verifyEmail"]["accessToken"]
        return c

    def me(self) -> User:
        d = self.execute(
            "{ me { id email displayName memberships { role organization { id name } } } }"
        )
        return User.from_json(d["me"])

    def create_api_token(
        self, organization_id: str, name: str, scope: TokenScope = TokenScope.WRITE
    ) -> str:
        """Creates an API token acting in one organisation; the secret is returned once."""
        d = self.execute(
            "mutation($o: ID!, $n: String!, $s: TokenScope!) {"
            " createApiToken(organizationId: $o, name: $n, scope: $s) { token } }",
            {"o": organization_id, "n": name, "s": scope.name},
        )
        token: str = d["createApiToken"]["token"]
        return token

    # --- labs -----------------------------------------------------------------------------

    def labs(self) -> list[Lab]:
        return [Lab.from_json(x) for x in self.execute(f"{{ labs {{ {LAB_FIELDS} }} }}")["labs"]]

    def lab(self, lab_id: str) -> Lab:
        d = self.execute(f"query($l: ID!) {{ lab(id: $l) {{ {LAB_FIELDS} }} }}", {"l": lab_id})
        if d["lab"] is None:
            raise MaosicError(f"lab {lab_id} not found", "NOT_FOUND")
        return Lab.from_json(d["lab"])

    def create_lab(self, organization_id: str, name: str) -> Lab:
        d = self.execute(
            f"mutation($o: ID!, $n: String!) {{ createLab(organizationId: $o, name: $n) {{ {LAB_FIELDS} }} }}",
            {"o": organization_id, "n": name},
        )
        return Lab.from_json(d["createLab"])

    def create_enrollment_token(self, lab_id: str) -> str:
        """A one-time token for ``maosic-agent enroll``."""
        d = self.execute(
            "mutation($l: ID!) { createEnrollmentToken(labId: $l) { token } }", {"l": lab_id}
        )
        token: str = d["createEnrollmentToken"]["token"]
        return token

    def wait_lab_online(self, lab_id: str, timeout: float = 60.0) -> Lab:
        deadline = time.monotonic() + timeout
        while True:
            lab = self.lab(lab_id)
            if lab.online:
                return lab
            if time.monotonic() > deadline:
                raise TimeoutError(f"lab {lab_id} did not come online within {timeout} s")
            time.sleep(0.1)

    # --- campaigns ------------------------------------------------------------------------

    def create_campaign(
        self,
        organization_id: str,
        lab_id: str,
        name: str,
        recipe: str,
        objective: str,
        *,
        optimizer: str = "snobfit",
        budget: int = 250,
        seed: Optional[int] = None,
        batch_size: Optional[int] = None,
        target: Optional[float] = None,
        priority: Optional[int] = None,
        optimizer_settings: Optional[Mapping[str, Any]] = None,
        start: bool = False,
    ) -> Campaign:
        d = self.execute(
            "mutation($o: ID!, $l: ID!, $n: String!, $r: String!, $obj: String!, $opt: String!,"
            " $set: JSON, $seed: Int, $b: Int!, $bs: Int, $t: Float, $p: Int, $start: Boolean) {"
            " createCampaign(organizationId: $o, labId: $l, name: $n, recipe: $r, objective: $obj,"
            " optimizer: $opt, optimizerSettings: $set, seed: $seed, budget: $b, batchSize: $bs,"
            f" target: $t, priority: $p, start: $start) {{ {CAMPAIGN_FIELDS} }} }}",
            {
                "o": organization_id,
                "l": lab_id,
                "n": name,
                "r": recipe,
                "obj": objective,
                "opt": optimizer,
                "set": dict(optimizer_settings) if optimizer_settings is not None else None,
                "seed": seed,
                "b": budget,
                "bs": batch_size,
                "t": target,
                "p": priority,
                "start": start,
            },
        )
        return Campaign.from_json(d["createCampaign"])

    def _campaign_mutation(self, name: str, campaign_id: str) -> Campaign:
        d = self.execute(
            f"mutation($c: ID!) {{ {name}(id: $c) {{ {CAMPAIGN_FIELDS} }} }}", {"c": campaign_id}
        )
        return Campaign.from_json(d[name])

    def start_campaign(self, campaign_id: str) -> Campaign:
        return self._campaign_mutation("startCampaign", campaign_id)

    def pause_campaign(self, campaign_id: str) -> Campaign:
        return self._campaign_mutation("pauseCampaign", campaign_id)

    def resume_campaign(self, campaign_id: str) -> Campaign:
        return self._campaign_mutation("resumeCampaign", campaign_id)

    def cancel_campaign(self, campaign_id: str) -> Campaign:
        return self._campaign_mutation("cancelCampaign", campaign_id)

    def campaign(self, campaign_id: str) -> Campaign:
        d = self.execute(
            f"query($c: ID!) {{ campaign(id: $c) {{ {CAMPAIGN_FIELDS} }} }}", {"c": campaign_id}
        )
        if d["campaign"] is None:
            raise MaosicError(f"campaign {campaign_id} not found", "NOT_FOUND")
        return Campaign.from_json(d["campaign"])

    def campaigns(self, organization_id: str) -> list[Campaign]:
        d = self.execute(
            f"query($o: ID!) {{ campaigns(organizationId: $o) {{ {CAMPAIGN_FIELDS} }} }}",
            {"o": organization_id},
        )
        return [Campaign.from_json(c) for c in d["campaigns"]]

    def queue_experiment(
        self, campaign_id: str, parameters: Mapping[str, float], name: Optional[str] = None
    ) -> Experiment:
        """Queues a person's own conditions (e.g. ``{"T": 130, "C": 0.8}``) into a campaign."""
        d = self.execute(
            "mutation($c: ID!, $p: JSON!, $n: String) {"
            f" queueExperiment(campaignId: $c, parameters: $p, name: $n) {{ {EXPERIMENT_FIELDS} }} }}",
            {"c": campaign_id, "p": dict(parameters), "n": name},
        )
        return Experiment.from_json(d["queueExperiment"])

    # --- experiments and data ---------------------------------------------------------------

    def experiments(
        self,
        campaign_id: str,
        *,
        state: Optional[ExperimentState | str] = None,
        source: Optional[str] = None,
        page_size: int = 100,
    ) -> list[Experiment]:
        """All experiments of a campaign (every page), oldest first; ``state`` filters by an
        :class:`ExperimentState` (or its name, any case)."""
        out: list[Experiment] = []
        after: Optional[str] = None
        state_name: Optional[str] = None
        if state is not None:
            parsed = (
                state if isinstance(state, ExperimentState) else ExperimentState.parse(state)
            )
            if parsed is ExperimentState.UNKNOWN:
                raise ValueError(f"not an experiment state: {state!r}")
            state_name = parsed.name
        while True:
            d = self.execute(
                "query($c: ID!, $f: Int, $a: String, $s: ExperimentState, $src: String) {"
                " campaign(id: $c) { experiments(first: $f, after: $a, state: $s, source: $src) {"
                f" nodes {{ {EXPERIMENT_FIELDS} }} pageInfo {{ hasNextPage endCursor }} }} }} }}",
                {"c": campaign_id, "f": page_size, "a": after, "s": state_name, "src": source},
            )
            if d["campaign"] is None:
                raise MaosicError(f"campaign {campaign_id} not found", "NOT_FOUND")
            page = d["campaign"]["experiments"]
            out.extend(Experiment.from_json(e) for e in page["nodes"])
            if not page["pageInfo"]["hasNextPage"]:
                return sorted(out, key=lambda e: e.seq)
            after = page["pageInfo"]["endCursor"]

    def experiment(self, experiment_id: str) -> Experiment:
        d = self.execute(
            f"query($e: ID!) {{ experiment(id: $e) {{ {EXPERIMENT_FIELDS} }} }}",
            {"e": experiment_id},
        )
        if d["experiment"] is None:
            raise MaosicError(f"experiment {experiment_id} not found", "NOT_FOUND")
        return Experiment.from_json(d["experiment"])

    def experiments_df(self, campaign_id: str) -> pd.DataFrame:
        """One row per experiment: id, seq, name, source, state, objective, one float column per
        parameter (``T``, ``C`` …), and ``best_so_far`` (the running best of the objective over
        completed experiments, in order: the maximum, or the minimum for a campaign whose
        ``objective_direction`` is ``MINIMIZE``)."""
        direction = self.campaign(campaign_id).objective_direction
        rows = []
        for e in self.experiments(campaign_id):
            row: dict[str, Any] = {
                "id": e.id,
                "seq": e.seq,
                "name": e.name,
                "source": e.source,
                "state": e.state.value,
                "objective": e.objective_value,
                "error": e.error,
            }
            row.update({k: v for k, v in e.parameters.items()})
            rows.append(row)
        df = pd.DataFrame(rows)
        if not df.empty:
            df = df.sort_values("seq").reset_index(drop=True)
            objective = df["objective"].astype(float)
            df["best_so_far"] = (
                objective.cummin()
                if direction is ObjectiveDirection.MINIMIZE
                else objective.cummax()
            )
        return df

    def features_df(self, campaign_id: str) -> pd.DataFrame:
        """One row per analysed experiment: id, seq, objective, the parameters and every
        feature of :class:`Features` (``exciton_wavelength_nm``, ``cd_at_exciton_mdeg``,
        ``g_factor`` …) as float columns (``peak_count`` as a nullable integer); a feature not
        measured is NaN."""
        rows = []
        for e in self.experiments(campaign_id):
            if e.features is None:
                continue
            row: dict[str, Any] = {"id": e.id, "seq": e.seq, "objective": e.objective_value}
            row.update(e.parameters)
            row.update(e.features.as_dict())
            rows.append(row)
        df = pd.DataFrame(rows)
        if df.empty:
            return df
        for name in Features.__dataclass_fields__:
            df[name] = df[name].astype("Int64" if name == "peak_count" else float)
        return df

    def peaks_df(self, campaign_id: str) -> pd.DataFrame:
        """One row per fitted absorption peak of every analysed experiment."""
        rows = [
            {"id": e.id, "seq": e.seq, "peak": i, **p.__dict__}
            for e in self.experiments(campaign_id)
            for i, p in enumerate(e.fitted_peaks)
        ]
        return pd.DataFrame(rows)

    def spectra_df(self, experiment_id: str) -> pd.DataFrame:
        """The spectra an experiment measured, long format: ``seq`` (the record's number; one
        per measurement), ``measurement`` (its name),
        ``kind`` (``absorption_spectrum``, ``cd_spectrum`` …), ``wavelength_nm``, ``quantity``
        (``absorbance``, ``cd_mdeg`` …) and ``value``."""
        d = self.execute(
            "query($e: ID!) { experiment(id: $e) { measurements { seq name kind data } } }",
            {"e": experiment_id},
        )
        if d["experiment"] is None:
            raise MaosicError(f"experiment {experiment_id} not found", "NOT_FOUND")
        frames = []
        for m in d["experiment"]["measurements"]:
            data = m.get("data") or {}
            wl = data.get("wavelength_nm")
            if not isinstance(wl, list):
                continue
            for key, values in data.items():
                if key == "wavelength_nm" or not isinstance(values, list):
                    continue
                if len(values) != len(wl):
                    continue
                frames.append(
                    pd.DataFrame(
                        {
                            "seq": m.get("seq"),
                            "measurement": m.get("name"),
                            "kind": data.get("kind", m.get("kind")),
                            "wavelength_nm": wl,
                            "quantity": key,
                            "value": values,
                        }
                    )
                )
        if not frames:
            return pd.DataFrame(
                columns=["seq", "measurement", "kind", "wavelength_nm", "quantity", "value"]
            )
        return pd.concat(frames, ignore_index=True)

    # --- instructions ---------------------------------------------------------------------

    def queue_instruction(
        self,
        lab_id: str,
        method: str,
        params: Optional[Mapping[str, Any]] = None,
        deadline_seconds: int = 300,
    ) -> LabCommand:
        """Queues one low-level instruction (e.g. ``"H.set_temperature", {"T": 25}``)."""
        d = self.execute(
            "mutation($l: ID!, $m: String!, $p: JSON, $d: Int!) {"
            " queueInstruction(labId: $l, method: $m, params: $p, deadlineSeconds: $d)"
            f" {{ {COMMAND_FIELDS} }} }}",
            {"l": lab_id, "m": method, "p": dict(params or {}), "d": deadline_seconds},
        )
        return LabCommand.from_json(d["queueInstruction"])

    def lab_command(self, command_id: str) -> LabCommand:
        d = self.execute(
            f"query($c: ID!) {{ labCommand(id: $c) {{ {COMMAND_FIELDS} }} }}", {"c": command_id}
        )
        return LabCommand.from_json(d["labCommand"])

    def wait_lab_command(self, command_id: str, timeout: float = 60.0) -> LabCommand:
        deadline = time.monotonic() + timeout
        while True:
            c = self.lab_command(command_id)
            if c.state.finished:
                return c
            if time.monotonic() > deadline:
                raise TimeoutError(f"instruction {command_id} still {c.state.value}")
            time.sleep(0.1)

    def send_instruction(
        self, lab_id: str, method: str, params: Optional[Mapping[str, Any]] = None
    ) -> Any:
        """Sends one instruction to a connected lab and returns the agent's answer."""
        d = self.execute(
            "mutation($l: ID!, $m: String!, $p: JSON) {"
            " sendInstruction(labId: $l, method: $m, params: $p) }",
            {"l": lab_id, "m": method, "p": dict(params or {})},
        )
        return d["sendInstruction"]

    def stop_lab(self, lab_id: str) -> Any:
        """Software stop: the agent cancels its programs and puts the lab in its safe state.
        The stop latches: the lab refuses instructions and programs until a fault reset."""
        return self.execute("mutation($l: ID!) { stopLab(labId: $l) }", {"l": lab_id})["stopLab"]

    def reset_lab_faults(self, lab_id: str, reason: str) -> dict[str, Any]:
        """Operator fault reset (owners and admins of the lab's organisation): clears the lab's
        latched safety faults; nothing restarts. Returns ``{"cleared": [...], "latched": [...]}``
        (faults whose condition persists latch again at once). Audited, with ``reason``."""
        d = self.execute(
            "mutation($l: ID!, $r: String!) { resetLabFaults(labId: $l, reason: $r) }",
            {"l": lab_id, "r": reason},
        )
        result: dict[str, Any] = d["resetLabFaults"]
        return result

    # --- subscriptions --------------------------------------------------------------------

    def subscribe(
        self,
        query: str,
        variables: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Iterator[dict[str, Any]]:
        """Runs one GraphQL subscription over graphql-ws and yields each ``data`` object.
        Ends when the server completes it, raises :class:`MaosicError` on an error message and
        :class:`TimeoutError` when nothing arrives for ``timeout`` seconds."""
        try:
            yield from self._subscribe(query, variables, timeout)
        except ConnectionClosed as e:
            # The server closes the socket when authentication fails (1002 at `connection_init`)
            # or the session or token is revoked (4401).
            reason = e.rcvd.reason if e.rcvd else str(e)
            code = e.rcvd.code if e.rcvd else None
            auth = code == 4401 or "auth" in reason.lower()
            raise MaosicError(
                f"subscription closed: {reason or code}", "UNAUTHENTICATED" if auth else None
            ) from e

    def _subscribe(
        self, query: str, variables: Optional[Mapping[str, Any]], timeout: Optional[float]
    ) -> Iterator[dict[str, Any]]:
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        with ws_connect(
            f"{ws_url}/graphql/ws", subprotocols=["graphql-transport-ws"]  # type: ignore[list-item]
        ) as ws:
            payload = {"authorization": f"Bearer {self.token}"} if self.token else {}
            ws.send(json.dumps({"type": "connection_init", "payload": payload}))
            ack = json.loads(ws.recv(timeout=timeout or 30))
            if ack.get("type") != "connection_ack":
                raise MaosicError(f"subscription refused: {ack}")
            sid = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "id": sid,
                        "type": "subscribe",
                        "payload": {"query": query, "variables": dict(variables or {})},
                    }
                )
            )
            while True:
                msg = json.loads(ws.recv(timeout=timeout))
                kind = msg.get("type")
                if kind == "ping":
                    ws.send(json.dumps({"type": "pong"}))
                elif kind == "next" and msg.get("id") == sid:
                    body = msg.get("payload") or {}
                    if body.get("errors"):
                        first = body["errors"][0]
                        code = (first.get("extensions") or {}).get("code")
                        raise MaosicError(first.get("message", "error"), code, body["errors"])
                    yield body.get("data") or {}
                elif kind == "error" and msg.get("id") == sid:
                    errs = msg.get("payload") or []
                    first = errs[0] if errs else {}
                    code = (first.get("extensions") or {}).get("code")
                    raise MaosicError(first.get("message", "subscription error"), code, errs)
                elif kind == "complete" and msg.get("id") == sid:
                    return

    def campaign_events(
        self, campaign_id: str, *, timeout: Optional[float] = None
    ) -> Iterator[CampaignEvent]:
        """Live events of one campaign (state changes, proposals, results, measurements)."""
        for d in self.subscribe(
            "subscription($c: ID!) { campaignEvents(campaignId: $c)"
            " { campaignId kind campaignState experimentState experimentId } }",
            {"c": campaign_id},
            timeout=timeout,
        ):
            yield CampaignEvent.from_json(d["campaignEvents"])

    def experiment_updates(
        self, campaign_id: str, *, timeout: Optional[float] = None
    ) -> Iterator[Experiment]:
        """Experiments of one campaign as they change state."""
        for d in self.subscribe(
            f"subscription($c: ID!) {{ experimentUpdates(campaignId: $c) {{ {EXPERIMENT_FIELDS} }} }}",
            {"c": campaign_id},
            timeout=timeout,
        ):
            yield Experiment.from_json(d["experimentUpdates"])

    def watch_campaign(
        self, campaign_id: str, *, timeout: float = 600.0, idle: float = 5.0
    ) -> Iterator[CampaignEvent]:
        """Yields the campaign's live events until it is finished (completed, canceled or
        failed) or paused (by a person, or by the engine when the lab refuses its programs:
        ``Campaign.state_detail`` says why). Re-reads the campaign whenever no event came for
        ``idle`` seconds (events are hints; the campaign's state is the truth), so a missed
        event cannot hang the watch."""
        deadline = time.monotonic() + timeout

        def stopped() -> bool:
            state = self.campaign(campaign_id).state
            return state.finished or state is CampaignState.PAUSED

        if stopped():
            return
        events = self.campaign_events(campaign_id, timeout=idle)
        while time.monotonic() < deadline:
            try:
                ev = next(events)
            except (TimeoutError, StopIteration):
                if stopped():
                    return
                events = self.campaign_events(campaign_id, timeout=idle)
                continue
            yield ev
            # Campaign-level events (`state`, `result`) may mean it just stopped.
            if ev.kind in ("state", "result") and stopped():
                return
        raise TimeoutError(f"campaign {campaign_id} not finished within {timeout} s")

    def wait_campaign(self, campaign_id: str, *, timeout: float = 600.0) -> Campaign:
        """Blocks until the campaign is finished or paused (driven by its live events); returns
        it."""
        for _ in self.watch_campaign(campaign_id, timeout=timeout):
            pass
        return self.campaign(campaign_id)
