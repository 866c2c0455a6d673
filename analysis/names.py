"""Metric names of the run-directory contract that the analysis relies on (docs/architecture.md, "Metric names")."""

PROXY = "reward/proxy_mean"
GOLD = "reward/gold_mean"
KL_K1 = "kl/ref_k1"
KL_K2 = "kl/ref_k2"
KL_K3 = "kl/ref_k3"
PPL = "ppl/policy"
LENGTH = "length/response_mean"
REPEAT = "diversity/repeat_ngram_frac"
ENTROPY = "entropy/policy_mean"

# k3 is preferred: it is non-negative per sample and unbiased, so its batch mean is the least noisy of the
# three estimators; k1 (log-ratio) follows, then k2.
KL_PREFERENCE = (KL_K3, KL_K1, KL_K2)

# Every metric the stability analysis and the plots read.
ANALYSED = (PROXY, GOLD, *KL_PREFERENCE, PPL, LENGTH, REPEAT, ENTROPY)


def pick_kl_metric(available) -> str | None:
    """The preferred KL estimator among ``available`` metric names (k3, else k1, else k2), or None."""
    present = set(available)
    return next((name for name in KL_PREFERENCE if name in present), None)
