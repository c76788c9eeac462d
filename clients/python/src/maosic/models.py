"""Typed results of the MAOSIC GraphQL API (plain dataclasses built from the server's JSON).

The API's states and the objective's direction are GraphQL enums (``"RUNNING"``,
``"MINIMIZE"``); they become the enums below (parsed case-insensitively, an unknown value is
``UNKNOWN``). An experiment's conditions, features and fitted peaks are typed objects in the
API and dataclasses here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Mapping, Optional, TypeVar

E = TypeVar("E", bound="_LooseEnum")


class _LooseEnum(str, Enum):
    """A string enum parsed case-insensitively; unknown values become ``UNKNOWN``."""

    @classmethod
    def parse(cls: type[E], value: Optional[str]) -> E:
        if value is None:
            return cls["UNKNOWN"]
        try:
            return cls[value.strip().upper()]
        except KeyError:
            return cls["UNKNOWN"]


class CampaignState(_LooseEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        """The campaign will not change any more."""
        return self in (CampaignState.COMPLETED, CampaignState.CANCELED, CampaignState.FAILED)


class ExperimentState(_LooseEnum):
    QUEUED = "queued"
    LEASED = "leased"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in (
            ExperimentState.COMPLETED,
            ExperimentState.FAILED,
            ExperimentState.INTERRUPTED,
            ExperimentState.CANCELED,
        )


class CommandState(_LooseEnum):
    QUEUED = "queued"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self not in (CommandState.QUEUED, CommandState.SENT, CommandState.UNKNOWN)


class ObjectiveDirection(_LooseEnum):
    """Which way a campaign's objective is optimised."""

    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"
    UNKNOWN = "unknown"


class TokenScope(_LooseEnum):
    READ = "read"
    WRITE = "write"
    UNKNOWN = "unknown"


def _f(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def _params(v: Any) -> dict[str, float]:
    """The API's typed conditions (``[{"name": "T", "value": 130.0}, …]``) as ``{name: value}``."""
    return {str(p["name"]): float(p["value"]) for p in (v or [])}


@dataclass(frozen=True)
class Organization:
    id: str
    name: str
    role: Optional[str] = None


@dataclass(frozen=True)
class User:
    id: str
    email: str
    display_name: str
    organizations: list[Organization]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "User":
        orgs = [
            Organization(
                id=m["organization"]["id"],
                name=m["organization"].get("name", ""),
                role=m.get("role"),
            )
            for m in d.get("memberships", [])
        ]
        return cls(id=d["id"], email=d["email"], display_name=d["displayName"], organizations=orgs)


@dataclass(frozen=True)
class Lab:
    id: str
    name: str
    organization_id: str
    online: bool

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Lab":
        return cls(
            id=d["id"],
            name=d["name"],
            organization_id=d.get("organizationId", ""),
            online=bool(d.get("online", False)),
        )


@dataclass(frozen=True)
class Parameter:
    name: str
    lower: float
    upper: float
    step: Optional[float]


@dataclass(frozen=True)
class Campaign:
    id: str
    name: str
    organization_id: str
    lab_id: str
    state: CampaignState
    state_detail: Optional[str]
    objective: str
    objective_direction: ObjectiveDirection
    optimizer: str
    budget: int
    proposals: int
    results: int
    best_value: Optional[float]
    best_parameters: Optional[dict[str, float]]
    parameters: list[Parameter] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Campaign":
        return cls(
            id=d["id"],
            name=d["name"],
            organization_id=d["organizationId"],
            lab_id=d["labId"],
            state=CampaignState.parse(d.get("state")),
            state_detail=d.get("stateDetail"),
            objective=d["objective"],
            objective_direction=ObjectiveDirection.parse(d.get("objectiveDirection")),
            optimizer=d["optimizer"],
            budget=int(d["budget"]),
            proposals=int(d["proposals"]),
            results=int(d["results"]),
            best_value=_f(d.get("bestValue")),
            best_parameters=(
                None if d.get("bestParameters") is None else _params(d["bestParameters"])
            ),
            parameters=[
                Parameter(p["name"], float(p["lower"]), float(p["upper"]), _f(p.get("step")))
                for p in d.get("parameters", [])
            ],
        )


@dataclass(frozen=True)
class Features:
    """What the analysis read from an experiment's spectra; ``None`` when not measured (no CD
    spectrum) or not finite."""

    exciton_wavelength_nm: Optional[float]
    exciton_absorbance: Optional[float]
    exciton_fwhm_nm: Optional[float]
    absorbance_at_exciton: Optional[float]
    cd_at_exciton_mdeg: Optional[float]
    cd_extremum_mdeg: Optional[float]
    cd_extremum_wavelength_nm: Optional[float]
    g_factor: Optional[float]
    peak_count: Optional[int]
    fit_r_squared: Optional[float]
    fit_reduced_chi_square: Optional[float]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Features":
        count = d.get("peakCount")
        return cls(
            exciton_wavelength_nm=_f(d.get("excitonWavelengthNm")),
            exciton_absorbance=_f(d.get("excitonAbsorbance")),
            exciton_fwhm_nm=_f(d.get("excitonFwhmNm")),
            absorbance_at_exciton=_f(d.get("absorbanceAtExciton")),
            cd_at_exciton_mdeg=_f(d.get("cdAtExcitonMdeg")),
            cd_extremum_mdeg=_f(d.get("cdExtremumMdeg")),
            cd_extremum_wavelength_nm=_f(d.get("cdExtremumWavelengthNm")),
            g_factor=_f(d.get("gFactor")),
            peak_count=None if count is None else int(count),
            fit_r_squared=_f(d.get("fitRSquared")),
            fit_reduced_chi_square=_f(d.get("fitReducedChiSquare")),
        )

    def as_dict(self) -> dict[str, Any]:
        """The features by name (``exciton_wavelength_nm`` …), for DataFrame rows."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


FEATURES_GRAPHQL = (
    "features { excitonWavelengthNm excitonAbsorbance excitonFwhmNm absorbanceAtExciton"
    " cdAtExcitonMdeg cdExtremumMdeg cdExtremumWavelengthNm gFactor peakCount fitRSquared"
    " fitReducedChiSquare }"
)


@dataclass(frozen=True)
class FittedPeak:
    """One fitted absorption peak; ``amplitude`` is the height above the fitted baseline.
    ``exciton`` marks the first exciton (the peak the features describe)."""

    index: int
    exciton: bool
    center_nm: Optional[float]
    amplitude: Optional[float]
    fwhm_nm: Optional[float]
    area: Optional[float]
    center_stderr_nm: Optional[float]
    amplitude_stderr: Optional[float]
    fwhm_stderr_nm: Optional[float]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FittedPeak":
        return cls(
            index=int(d["index"]),
            exciton=bool(d["exciton"]),
            center_nm=_f(d.get("centerNm")),
            amplitude=_f(d.get("amplitude")),
            fwhm_nm=_f(d.get("fwhmNm")),
            area=_f(d.get("area")),
            center_stderr_nm=_f(d.get("centerStderrNm")),
            amplitude_stderr=_f(d.get("amplitudeStderr")),
            fwhm_stderr_nm=_f(d.get("fwhmStderrNm")),
        )


FITTED_PEAKS_GRAPHQL = (
    "fittedPeaks { peaks { index exciton centerNm amplitude fwhmNm area centerStderrNm"
    " amplitudeStderr fwhmStderrNm } }"
)


@dataclass(frozen=True)
class Experiment:
    id: str
    campaign_id: str
    seq: int
    name: str
    source: str
    state: ExperimentState
    parameters: dict[str, float]
    objective_value: Optional[float]
    features: Optional[Features]
    fitted_peaks: list[FittedPeak]
    error: Optional[str]
    queued_at: str
    finished_at: Optional[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Experiment":
        fit = d.get("fittedPeaks") or {}
        features = d.get("features")
        return cls(
            id=d["id"],
            campaign_id=d["campaignId"],
            seq=int(d["seq"]),
            name=d["name"],
            source=d["source"],
            state=ExperimentState.parse(d.get("state")),
            parameters=_params(d.get("parameters")),
            objective_value=_f(d.get("objectiveValue")),
            features=None if features is None else Features.from_json(features),
            fitted_peaks=[FittedPeak.from_json(p) for p in fit.get("peaks") or []],
            error=d.get("error"),
            queued_at=d["queuedAt"],
            finished_at=d.get("finishedAt"),
        )


@dataclass(frozen=True)
class CampaignEvent:
    """One event of ``campaignEvents``. ``kind``: ``state`` (the campaign's state changed),
    ``queued`` (new proposals), ``result`` (an experiment was analysed and told), ``experiment``
    (an experiment changed state), ``measurement`` (a measurement arrived).
    ``campaign_state`` is set on the campaign's own events (``state``, ``queued``, ``result``),
    ``experiment_state`` on an experiment's (``experiment``, ``measurement``)."""

    campaign_id: str
    kind: str
    campaign_state: Optional[CampaignState]
    experiment_state: Optional[ExperimentState]
    experiment_id: Optional[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CampaignEvent":
        return cls(
            campaign_id=d["campaignId"],
            kind=d["kind"],
            campaign_state=(
                None if d.get("campaignState") is None else CampaignState.parse(d["campaignState"])
            ),
            experiment_state=(
                None
                if d.get("experimentState") is None
                else ExperimentState.parse(d["experimentState"])
            ),
            experiment_id=d.get("experimentId"),
        )


@dataclass(frozen=True)
class LabCommand:
    id: str
    lab_id: str
    method: str
    params: dict[str, Any]
    state: CommandState
    result: Any
    error: Optional[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LabCommand":
        return cls(
            id=d["id"],
            lab_id=d["labId"],
            method=d["method"],
            params=dict(d.get("params") or {}),
            state=CommandState.parse(d.get("state")),
            result=d.get("result"),
            error=d.get("error"),
        )
