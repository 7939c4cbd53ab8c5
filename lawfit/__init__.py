"""lawfit: scaling laws, robust fitting with uncertainty, IsoFLOP analysis and
compute-optimal allocation.  Pure numpy/scipy/pandas: never imports torch.

Units: N counts parameters, D training tokens, C training compute in FLOP
(1 PF-day = 8.64e19 FLOP); losses are as given (nats/token for the published fits).

    from flopscale import lawfit
    fit = lawfit.fit("runs.csv", law="chinchilla", bootstrap=1000)   # or a data set:
    fit = lawfit.fit("chinchilla_fig4_epoch", exclude="highest-loss:5")  # lawfit.datasets.names()
    print(fit)
    plan = lawfit.allocate(1e24, law=fit)          # or any name in lawfit.law_names()
    plan.N, plan.D, plan.loss, plan.ci
"""
from flopscale._namespace import require_namespaced as _require_namespaced

_require_namespaced(__name__, 'lawfit')
from ._errors import LawfitError, LawfitWarning
from . import allocation_laws, datasets, laws, published
from .laws import (BNSL, PF_DAY, Chinchilla, KaplanC, KaplanD, KaplanN, KaplanND, Law, PowerLaw, Saturating,
                   critical_batch_size, get_law)
from .fitting import FitResult, fit, load_fit
from .isoflop import IsoFLOPResult, PowerFit, isoflop
from .allocation_laws import AllocationLaw
from .allocation import Allocation, allocate, law_names, optimal_for_params, predict_loss
from .allocation_report import AllocationReport, allocation_report

__all__ = [
    "LawfitError", "LawfitWarning", "datasets", "laws", "published", "Law", "Chinchilla", "KaplanN", "KaplanD", "KaplanND",
    "KaplanC", "PowerLaw", "BNSL", "Saturating", "critical_batch_size", "get_law", "PF_DAY",
    "fit", "FitResult", "load_fit", "isoflop", "IsoFLOPResult", "PowerFit",
    "allocate", "Allocation", "optimal_for_params", "predict_loss", "law_names", "allocation_laws", "AllocationLaw",
    "allocation_report", "AllocationReport",
]
