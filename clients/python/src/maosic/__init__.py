"""Python client of MAOSIC, the self-driving cloud lab: log in or use an API token, create,
start and watch campaigns (GraphQL subscriptions), pull experiments, features and spectra as
pandas DataFrames, queue manual experiments and instructions."""

from .client import Client, MaosicError
from .models import (
    Campaign,
    CampaignEvent,
    CampaignState,
    CommandState,
    Experiment,
    ExperimentState,
    Features,
    FittedPeak,
    Lab,
    LabCommand,
    ObjectiveDirection,
    Organization,
    Parameter,
    TokenScope,
    User,
)

__all__ = [
    "Campaign",
    "CampaignEvent",
    "CampaignState",
    "Client",
    "CommandState",
    "Experiment",
    "ExperimentState",
    "Features",
    "FittedPeak",
    "Lab",
    "LabCommand",
    "MaosicError",
    "ObjectiveDirection",
    "Organization",
    "Parameter",
    "TokenScope",
    "User",
]
__version__ = "0.1.0"
