"""Metric names of the run-directory contract that the analysis relies on (docs/architecture.md, "Metric names")."""

PROXY = "reward/proxy_mean"
GOLD = "reward/gold_mean"
KL_INIT_K1 = "kl/init_k1"
KL_INIT_K2 = "kl/init_k2"
KL_INIT_K3 = "kl/init_k3"
KL_REF_K1 = "kl/ref_k1"
KL_REF_K2 = "kl/ref_k2"
KL_REF_K3 = "kl/ref_k3"
PPL = "ppl/policy"
LENGTH = "length/response_mean"
REPEAT = "diversity/repeat_ngram_frac"
ENTROPY = "entropy/policy_mean"

# KL to the run's initial policy (the distance travelled) is what every cross-arm quantity uses: KL to the
# reference is not, where the reference is not the initial policy (reference=soup; reference=dpo in runs from
# before kl/init_*). Within each, k3 is preferred: it is non-negative per sample and unbiased, so its batch mean
# is the least noisy of the three estimators; k1 (log-ratio) follows, then k2. KL to the reference is the
# fallback for run directories that predate kl/init_* (analysis.load derives kl/init_* where the reference is
# the initial policy, so the fallback applies to the others only).
KL_INIT_PREFERENCE = (KL_INIT_K3, KL_INIT_K1, KL_INIT_K2)
KL_REF_PREFERENCE = (KL_REF_K3, KL_REF_K1, KL_REF_K2)
KL_PREFERENCE = KL_INIT_PREFERENCE + KL_REF_PREFERENCE
# The KL to the initial policy that each KL-to-reference metric equals when the reference is the initial policy.
KL_INIT_OF_REF = dict(zip(KL_REF_PREFERENCE, KL_INIT_PREFERENCE))

# Every metric the stability analysis and the plots read.
ANALYSED = (PROXY, GOLD, *KL_PREFERENCE, PPL, LENGTH, REPEAT, ENTROPY)


def pick_kl_metric(available) -> str | None:
    """The preferred KL metric among ``available`` metric names (``KL_PREFERENCE``: kl/init_k3, else
    kl/init_k1, else kl/init_k2, else kl/ref_k3, kl/ref_k1, kl/ref_k2), or None."""
    present = set(available)
    return next((name for name in KL_PREFERENCE if name in present), None)


def is_init_kl(metric: str | None) -> bool:
    """True for a KL to the run's initial policy (``kl/init_*``), False for a KL to the reference or None."""
    return metric in KL_INIT_PREFERENCE


def kl_label(metric: str) -> str:
    """What a KL metric measures, in words: "KL to the initial policy" or "KL to the reference"."""
    return "KL to the initial policy" if is_init_kl(metric) else "KL to the reference"
