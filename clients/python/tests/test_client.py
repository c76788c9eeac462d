"""The client against the real server and the virtual-lab agent (fixtures in conftest.py)."""

from __future__ import annotations

import time

import pytest

from maosic import (
    CampaignState,
    Client,
    CommandState,
    ExperimentState,
    Features,
    MaosicError,
    ObjectiveDirection,
    TokenScope,
)

from maosic.local import LocalLab

OBJECTIVE = "maximize abs(cd_at_exciton)"


def test_log_in_and_api_tokens(local: LocalLab) -> None:
    with Client.login(local.url, local.email, local.password) as c:
        me = c.me()
        assert me.email == local.email
        assert me.organizations[0].id == local.organization_id
        token = c.create_api_token(local.organization_id, "pytest", TokenScope.READ)
    with Client(local.url, token=token) as api:
        assert api.me().email == local.email
        # A read-only token may not create labs.
        with pytest.raises(MaosicError) as err:
            api.create_lab(local.organization_id, "not allowed")
        assert err.value.code is not None
    with pytest.raises(MaosicError) as err:
        Client.login(local.url, local.email, "wrong password")
    assert err.value.code is not None


def test_anonymous_subscription_is_refused(local: LocalLab) -> None:
    with Client(local.url) as anonymous:
        with pytest.raises(MaosicError) as err:
            next(anonymous.campaign_events("00000000-0000-0000-0000-000000000000", timeout=10))
        assert err.value.code == "UNAUTHENTICATED"


def test_campaign_created_started_watched_and_pulled_as_dataframes(
    local: LocalLab, recipe: str
) -> None:
    c = local.client
    budget = 6
    campaign = c.create_campaign(
        local.organization_id,
        local.lab_id,
        "pytest chirality",
        recipe,
        OBJECTIVE,
        optimizer="sobol",
        budget=budget,
        seed=3,
    )
    assert campaign.state is CampaignState.DRAFT
    assert campaign.objective_direction is ObjectiveDirection.MAXIMIZE
    assert {p.name for p in campaign.parameters} == {"T", "C"}
    assert c.start_campaign(campaign.id).state is CampaignState.RUNNING
    manual = c.queue_experiment(campaign.id, {"T": 130.0, "C": 0.8}, name="by hand")
    assert manual.source.lower() == "manual"

    events = []
    for ev in c.watch_campaign(campaign.id, timeout=300):
        events.append(ev)
    done = c.campaign(campaign.id)
    assert done.state is CampaignState.COMPLETED, (done.state, done.state_detail)
    assert events, "no live event arrived"
    assert {e.campaign_id for e in events} == {campaign.id}
    assert done.best_value is not None and done.best_value > 0

    exps = c.experiments(campaign.id)
    assert len(exps) == budget + 1
    assert all(e.state is ExperimentState.COMPLETED for e in exps), exps
    by_hand = [e for e in exps if e.name == "by hand"]
    assert by_hand and by_hand[0].parameters == {"T": 130.0, "C": 0.8}
    assert all(isinstance(e.features, Features) for e in exps), exps
    assert all(e.fitted_peaks and sum(p.exciton for p in e.fitted_peaks) == 1 for e in exps)
    assert done.best_parameters is not None and set(done.best_parameters) == {"T", "C"}
    # The state filter takes the enum (or its name, any case).
    assert len(c.experiments(campaign.id, state=ExperimentState.COMPLETED)) == budget + 1
    assert c.experiments(campaign.id, state="failed") == []
    with pytest.raises(ValueError):
        c.experiments(campaign.id, state="finished")

    df = c.experiments_df(campaign.id)
    assert len(df) == budget + 1
    assert {"T", "C", "objective", "best_so_far", "state"} <= set(df.columns)
    assert df["best_so_far"].is_monotonic_increasing
    assert df["best_so_far"].iloc[-1] == pytest.approx(done.best_value)
    assert df["T"].dtype == float and df["C"].dtype == float

    features = c.features_df(campaign.id)
    assert len(features) == budget + 1
    assert {"cd_at_exciton_mdeg", "exciton_wavelength_nm", "T", "C"} <= set(features.columns)
    assert features["exciton_wavelength_nm"].between(380, 560).all()
    for column in ("exciton_wavelength_nm", "cd_at_exciton_mdeg", "g_factor", "T", "C"):
        assert features[column].dtype == float, (column, features[column].dtype)
    assert str(features["peak_count"].dtype) == "Int64"
    assert (features["peak_count"] >= 1).all()

    peaks = c.peaks_df(campaign.id)
    assert not peaks.empty and (peaks["amplitude"] > 0).all()

    spectra = c.spectra_df(exps[0].id)
    kinds = set(spectra["kind"])
    assert {"absorption_spectrum", "cd_spectrum"} <= kinds, kinds
    absorption = spectra[spectra["quantity"] == "absorbance"]
    assert len(absorption) > 100
    for _, one in absorption.groupby("seq"):
        assert one["wavelength_nm"].is_monotonic_increasing


def test_minimize_campaign_best_so_far_is_the_running_minimum(
    local: LocalLab, recipe: str
) -> None:
    c = local.client
    budget = 3
    campaign = c.create_campaign(
        local.organization_id,
        local.lab_id,
        "pytest minimise",
        recipe,
        "minimise abs(cd_at_exciton)",
        optimizer="sobol",
        budget=budget,
        seed=5,
    )
    assert campaign.objective_direction is ObjectiveDirection.MINIMIZE
    c.start_campaign(campaign.id)
    done = c.wait_campaign(campaign.id, timeout=300)
    assert done.state is CampaignState.COMPLETED, (done.state, done.state_detail)
    df = c.experiments_df(campaign.id)
    assert len(df) == budget
    assert df["best_so_far"].is_monotonic_decreasing
    assert df["best_so_far"].iloc[-1] == pytest.approx(df["objective"].min())
    assert df["best_so_far"].iloc[-1] == pytest.approx(done.best_value)


def test_queued_instruction_runs_on_the_lab(local: LocalLab) -> None:
    c = local.client
    # a setpoint the block settles at within the step's time-out from anywhere in 25-180 C:
    # the heater has no cooling, so room temperature itself is approached over half an hour
    cmd = c.queue_instruction(local.lab_id, "H.set_temperature", {"T": 100}, deadline_seconds=60)
    assert cmd.state in (CommandState.QUEUED, CommandState.SENT)
    done = c.wait_lab_command(cmd.id, timeout=60)
    assert done.state is CommandState.SUCCEEDED, done
    with pytest.raises(MaosicError) as err:
        c.queue_instruction(local.lab_id, "H.set_temperature", {"T": 9999})
    assert err.value.code == "BAD_USER_INPUT"


def test_rate_limited_queries_wait_the_time_the_server_names(local: LocalLab) -> None:
    # About 200 KiB of document: the default budget (1 MiB at once, 256 KiB/s) holds five.
    big = "{ serverInfo { name } } # " + "x" * (200 * 1024)
    with Client.login(local.url, local.email, local.password, rate_limit_wait=0) as impatient:
        with pytest.raises(MaosicError) as err:
            for _ in range(8):
                impatient.execute(big)
        assert err.value.code == "RATE_LIMITED"
    with Client.login(local.url, local.email, local.password) as patient:
        started = time.monotonic()
        assert patient.execute(big)["serverInfo"]["name"] == "maosic"
        # It had to wait for the bucket to refill (about 0.8 s for 200 KiB).
        assert time.monotonic() - started > 0.3


def test_a_stopped_lab_refuses_instructions_until_its_faults_are_reset(local: LocalLab) -> None:
    c = local.client
    c.stop_lab(local.lab_id)
    with pytest.raises(MaosicError) as err:
        c.send_instruction(local.lab_id, "P1.stop")
    assert "latched" in err.value.message
    reset = c.reset_lab_faults(local.lab_id, "pytest: stopped on purpose")
    assert [f["kind"] for f in reset["cleared"]] == ["e_stop"]
    assert reset["latched"] == []
    c.send_instruction(local.lab_id, "P1.stop")
