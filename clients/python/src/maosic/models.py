"""Typed results of the MAOSIC GraphQL API (plain dataclasses built from the server's JSON).

States are enums parsed case-insensitively, so the client reads both the lower-case strings the
API returns today (``"running"``) and upper-case GraphQL enum values (``"RUNNING"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class TokenScope(_LooseEnum):
    READ = "read"
    WRITE = "write"
    UNKNOWN = "unknown"


def _f(v: Any) -> Optional[float]:
    return None if v is None else float(v)


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
            optimizer=d["optimizer"],
            budget=int(d["budget"]),
            proposals=int(d["proposals"]),
            results=int(d["results"]),
            best_value=_f(d.get("bestValue")),
            best_parameters=d.get("bestParameters"),
            parameters=[
                Parameter(p["name"], float(p["lower"]), float(p["upper"]), _f(p.get("step")))
                for p in d.get("parameters", [])
            ],
        )


@dataclass(frozen=True)
class FittedPeak:
    """One fitted absorption peak; ``amplitude`` is the height above the fitted baseline."""

    center_nm: float
    amplitude: float
    fwhm_nm: float
    area: Optional[float]
    center_stderr_nm: Optional[float]
    amplitude_stderr: Optional[float]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FittedPeak":
        return cls(
            center_nm=float(d["center_nm"]),
            amplitude=float(d["amplitude"]),
            fwhm_nm=float(d["fwhm_nm"]),
            area=_f(d.get("area")),
            center_stderr_nm=_f(d.get("center_stderr_nm")),
            amplitude_stderr=_f(d.get("amplitude_stderr")),
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
    features: dict[str, Any]
    fitted_peaks: list[FittedPeak]
    error: Optional[str]
    queued_at: str
    finished_at: Optional[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Experiment":
        fit = d.get("fittedPeaks") or {}
        peaks = fit.get("peaks", []) if isinstance(fit, dict) else []
        return cls(
            id=d["id"],
            campaign_id=d["campaignId"],
            seq=int(d["seq"]),
            name=d["name"],
            source=d["source"],
            state=ExperimentState.parse(d.get("state")),
            parameters=dict(d.get("parameters") or {}),
            objective_value=_f(d.get("objectiveValue")),
            features=dict(d.get("features") or {}),
            fitted_peaks=[FittedPeak.from_json(p) for p in peaks if isinstance(p, dict)],
            error=d.get("error"),
            queued_at=d["queuedAt"],
            finished_at=d.get("finishedAt"),
        )


@dataclass(frozen=True)
class CampaignEvent:
    """One event of ``campaignEvents``. ``kind``: ``state`` (the campaign's state changed),
    ``queued`` (new proposals), ``result`` (an experiment was analysed and told), ``experiment``
    (an experiment changed state), ``measurement`` (a measurement arrived); ``state`` is the
    campaign's or the experiment's state."""

    campaign_id: str
    kind: str
    state: Optional[str]
    experiment_id: Optional[str]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CampaignEvent":
        return cls(
            campaign_id=d["campaignId"],
            kind=d["kind"],
            state=d.get("state"),
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
