"""The performance work (packed forward passes, rollout log-probs from the generation logits, fused AdamW)
changes no result beyond float rounding.

Two kinds of check:

1. Golden metrics. `GOLDEN` (end of file) holds every non-`perf/` metric of 3 seeded PPO iterations (after 2
   critic pre-training iterations where configured) for three configs that together reach every optimised code
   path: rollout log-probs and entropy from the generation logits, packed forward passes (policy, reference,
   critic, reward model; rollout and training), the fused log-softmax/entropy, inference-mode scoring, fused
   AdamW. The values were recorded with the code BEFORE the speed-ups (git 18b9983, torch 2.13.0+cpu,
   transformers 5.23.0) by `python tests/test_perf_equivalence.py --record`.

   Tolerance: |new - golden| <= ABS_TOL + REL_TOL * |golden| for every metric, REL_TOL = 1e-3, ABS_TOL = 1e-5.
   The optimised code reorders float reductions (other GEMM shapes, no padding columns, logits from the
   KV-cache pass, another AdamW kernel); observed after 3 iterations: <= 3e-5 relative on metrics of size
   > 1e-3, <= 6e-7 absolute (torch thread count alone moves them ~1e-7). The bound is >= 30x that, and far
   below any trick's effect (percents). The sampled tokens must stay identical: one flipped token moves the
   length/diversity metrics by far more than the tolerance, so a change in RNG use or sampling fails here.
2. The optimised helpers against the straightforward padded computation on one rollout batch with left padding
   and post-EOS padding: outputs and policy gradients (rtol/atol 1e-4), and the packing's bookkeeping.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_config  # noqa: E402

from rlhf_lab.algo import ppo  # noqa: E402
from rlhf_lab.engine.data import Stream  # noqa: E402
from rlhf_lab.run.build import assemble  # noqa: E402
from rlhf_lab.engine.models import load_policy, load_reward_model, load_tokenizer, make_critic  # noqa: E402
from rlhf_lab.engine.packing import pack, position_ids  # noqa: E402
from rlhf_lab.engine.roles import check_forward  # noqa: E402
from rlhf_lab.engine.runtime import Runtime  # noqa: E402
from rlhf_lab.toy.language import ToyLanguage  # noqa: E402
from rlhf_lab.toy.stages import build_tokenizer  # noqa: E402
from rlhf_lab.trainer import PPOTrainer  # noqa: E402

REL_TOL, ABS_TOL = 1e-3, 1e-5
# metrics added after the golden values were recorded (new names; no old one renamed or dropped)
ADDED_SINCE_GOLDEN = {"length/response_tokens", "ppo/loss", "kl/init_k1", "kl/init_k2", "kl/init_k3", "ppl/init"}
ITERATIONS = 3
COMMON = ("ppo.batch_size=16", "ppo.minibatches=2", "ppo.max_new_tokens=12", "seed=5")
CONFIGS = {
    # the benchmark's TRL-equivalent settings, at a temperature != 1 (the generation logits are divided by it)
    "trl_like": ("preset=vanilla", "kl_penalty=token", "adv_norm=whiten", "value_clip=on",
                 "critic_init=reward_model", "ppo.temperature=0.7"),
    # every PPO-max trick: critic pre-training, ptx loss, running reward statistics, grad clipping
    "ppo_max": ("preset=ppo_max", "critic_pretrain.steps=2", "ptx_loss.batch_size=4"),
    # the entropy bonus (entropy under gradient), KL as a loss, dual clip, a fresh-headed critic
    "entropy_kl_loss": ("preset=vanilla", "kl_penalty=loss", "entropy_bonus=on", "policy_clip=dual",
                        "reward_norm=batch", "adv_clip=on", "critic_init=sft"),
}


def build_checkpoints(root: Path) -> tuple[Path, Path]:
    """(sft_dir, rm_dir): a 2-layer, 48-wide random Llama and a reward model of the same shape (seeded)."""
    tokenizer = build_tokenizer(ToyLanguage.build(0))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    sft_dir, rm_dir = root / "sft", root / "rm"
    policy = LlamaForCausalLM(config)
    # make EOS likely enough that responses have varied lengths (padding after EOS is what packing removes)
    with torch.no_grad():
        policy.model.embed_tokens.weight[tokenizer.eos_token_id] *= 30
    policy.save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1)
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    rm.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    return sft_dir, rm_dir


def seeded_trainer(checkpoints: tuple[Path, Path], *overrides: str) -> PPOTrainer:
    """A trainer on the tiny checkpoints whose prompts have 3-8 words (so left padding varies too)."""
    sft_dir, rm_dir = checkpoints
    cfg = make_config(*COMMON, "ptx_loss.batch_size=4", *overrides)
    language = ToyLanguage.build(0)

    def prompt(rng):
        return " ".join(language.sample_prompt(rng).split()[:rng.randint(3, 8)])
    tokenizer = load_tokenizer(sft_dir)
    torch.manual_seed(cfg.seed)
    critic = make_critic(cfg.critic_init.name, sft_dir, rm_dir, tokenizer.pad_token_id, torch.float32)
    return assemble(cfg, Runtime.create(cfg.device, cfg.precision), policy=load_policy(sft_dir, torch.float32),
                    reference=load_policy(sft_dir, torch.float32), critic=critic,
                    reward_model=load_reward_model(rm_dir, torch.float32), tokenizer=tokenizer,
                    prompts=Stream(prompt, cfg.seed),
                    sft_examples=Stream(lambda rng: (prompt(rng), language.sample_prompt(rng)), cfg.seed + 1))


def seeded_metrics(checkpoints: tuple[Path, Path], name: str) -> list[dict[str, float]]:
    """Every non-perf metric of ITERATIONS PPO iterations (after critic pre-training where configured)."""
    trainer = seeded_trainer(checkpoints, *CONFIGS[name])
    torch.manual_seed(trainer.cfg.seed)
    pretrain = [{f"pretrain/{k}": v for k, v in stats.items()} for stats in trainer.warm_up()]
    rows = []
    for _ in range(ITERATIONS):
        metrics, _ = trainer.step()
        rows.append({k: v for k, v in metrics.items() if not k.startswith("perf/")})
    if pretrain:
        rows[0].update(pretrain[-1])
    return rows


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    return build_checkpoints(tmp_path_factory.mktemp("perf"))


# ---------------------------------------------------------------- 1. golden metrics from before the speed-ups
# GOLDEN (at the end of this file): recorded by --record with the code before the speed-ups.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_seeded_metrics_match_the_golden_values(checkpoints, name):
    rows = seeded_metrics(checkpoints, name)
    golden = GOLDEN[name]
    assert len(rows) == len(golden)
    for step, (row, expected) in enumerate(zip(rows, golden)):
        assert set(row) == set(expected) | ADDED_SINCE_GOLDEN, f"{name} step {step}: metric names changed"
        for key, value in expected.items():
            assert math.isclose(row[key], value, rel_tol=REL_TOL, abs_tol=ABS_TOL), \
                f"{name} step {step}: {key} = {row[key]!r}, golden {value!r}"


# ---------------------------------------------------------------- 2. optimised helpers against the padded computation
def packed_response_logits(policy, ids, mask, n, temperature):
    """The policy role's packed pass."""
    return policy(pack(ids, mask), n, temperature)


def padded_response_logits(policy, ids, mask, n, temperature):
    """The straightforward version: a full padded forward pass with the attention mask."""
    model = policy.model
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    return out.logits[:, -n - 1:-1].float() / temperature


def padded_values(critic, ids, mask, n):
    critic = critic.model
    hidden = critic.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                               use_cache=False).last_hidden_state
    return critic.score(hidden[:, -n - 1:-1]).squeeze(-1).float()


def padded_scores(reward_model, ids, mask):
    """Transformers' own pooling (the last token that is not PAD)."""
    return reward_model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits[:, 0]


@pytest.fixture(scope="module")
def rollout(checkpoints):
    trainer = seeded_trainer(checkpoints, *CONFIGS["trl_like"])
    torch.manual_seed(11)
    batch = trainer.rollout()
    assert (batch.attention[:, 0] == 0).any() and (batch.mask == 0).any(), "the batch must have padding to remove"
    return trainer, batch


def test_pack_keeps_every_real_token_once(rollout):
    _, batch = rollout
    packing = pack(batch.ids, batch.attention)
    real = batch.attention.bool()
    rows, width = packing.input_ids.shape
    assert width == 2 * batch.ids.shape[1] and rows * width < real.numel()
    slots = packing.slot[real]
    assert slots.unique().numel() == slots.numel() == int(real.sum())
    assert torch.equal(packing.input_ids.view(-1)[slots], batch.ids[real])
    assert torch.equal(packing.position_ids.view(-1)[slots], position_ids(batch.attention)[real])
    last_column = (torch.arange(real.shape[1]) * real).argmax(1)
    assert torch.equal(packing.last, packing.slot[torch.arange(len(real)), last_column])


def test_packed_forwards_match_padded_reference(rollout):
    trainer, batch = rollout
    ids, attention, mask, n, temperature = batch.ids, batch.attention, batch.mask, batch.tokens.shape[1], 0.7
    on = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(trainer.reference(pack(ids, attention), n, temperature)[on],
                                   padded_response_logits(trainer.reference, ids, attention, n, temperature)[on],
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(trainer.critic(pack(ids, attention), n)[on],
                                   padded_values(trainer.critic, ids, attention, n)[on], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(trainer.reward_model(pack(ids, attention))[:, 0],
                                   padded_scores(trainer.reward_model.members[0], ids, attention), rtol=1e-4, atol=1e-4)
    # the gradient through the packed pass is the padded one
    grads = []
    for logits_fn in (packed_response_logits, padded_response_logits):
        trainer.policy.zero_grad()
        logp = ppo.logprobs_from_logits(logits_fn(trainer.policy, ids, attention, n, temperature), batch.tokens)
        ppo.masked_mean(logp, mask).backward()
        grads.append({k: p.grad.clone() for k, p in trainer.policy.named_parameters()})
    for key, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][key], rtol=1e-4, atol=1e-5)


def test_rollout_logprobs_match_a_full_forward(rollout):
    """Log-probs and entropy taken from the generation logits = a second forward pass of the policy."""
    trainer, batch = rollout
    on = batch.mask.bool()
    with torch.no_grad():
        logits = padded_response_logits(trainer.policy, batch.ids, batch.attention, batch.tokens.shape[1], 0.7)
    torch.testing.assert_close(batch.logprobs[on], ppo.logprobs_from_logits(logits, batch.tokens)[on],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch.entropy[on], ppo.entropy_from_logits(logits)[on], rtol=1e-4, atol=1e-4)
    assert (batch.logprobs[~on] == 0).all() and (batch.values[~on] == 0).all()


def test_check_forward_rejects_a_model_that_attends_across_sequences(rollout, monkeypatch):
    from transformers import masking_utils

    trainer, _ = rollout
    check_forward(trainer.policy.model)  # transformers' Llama keeps packed sequences apart
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(ValueError, match="packed sequence boundaries"):
        check_forward(trainer.policy.model)


def test_fused_logprobs_and_entropy():
    logits, tokens = torch.randn(3, 5, 11) * 4, torch.randint(0, 11, (3, 5))
    logprobs, entropy = ppo.logprobs_and_entropy(logits, tokens)
    torch.testing.assert_close(logprobs, ppo.logprobs_from_logits(logits, tokens))
    torch.testing.assert_close(entropy, ppo.entropy_from_logits(logits))


if __name__ == "__main__" and "--record" in sys.argv:
    import pprint
    import tempfile

    from rlhf_lab.config.schema import register_schema
    from rlhf_lab.engine.models import quiet_transformers

    register_schema()
    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = build_checkpoints(Path(tmp))
        recorded = {name: seeded_metrics(ckpts, name) for name in CONFIGS}
    print("GOLDEN = ", end="")
    pprint.pprint(recorded, width=118, sort_dicts=True)


# ---------------------------------------------------------------- recorded at git 18b9983 (before the performance work)
GOLDEN = {'entropy_kl_loss': [{'adv/mean': 0.10698114335536957,
                      'adv/std': 1.1239423751831055,
                      'diversity/distinct_1': 0.9054054054054054,
                      'diversity/distinct_2': 1.0,
                      'diversity/repeat_ngram_frac': 0.0,
                      'entropy/policy_mean': 4.925952434539795,
                      'kl/ref_k1': 0.0,
                      'kl/ref_k2': 0.0,
                      'kl/ref_k3': 0.0,
                      'kl_ctl/coef': 0.0,
                      'length/eos_missing_frac': 0.1875,
                      'length/response_max': 12.0,
                      'length/response_mean': 5.4375,
                      'ppl/policy': 116.77881622314453,
                      'ppl/ref': 116.77881622314453,
                      'ppo/approx_kl': 0.0371029507368803,
                      'ppo/clipfrac': 0.1010060552507639,
                      'ppo/entropy_bonus': 0.04815325327217579,
                      'ppo/explained_var': -0.018023252487182617,
                      'ppo/grad_norm_critic': 4.261639297008514,
                      'ppo/grad_norm_policy': 8.24305671453476,
                      'ppo/policy_loss': 0.014438658952713013,
                      'ppo/ptx_loss': 0.0,
                      'ppo/value_clipfrac': 0.0,
                      'ppo/value_loss': 0.6021182835102081,
                      'return/mean': 0.12123943120241165,
                      'reward/proxy_mean': -4.842366695404053,
                      'reward/shaped_mean': -1.825392246246338e-07,
                      'value/mean': 0.014258274808526039},
                     {'adv/mean': 0.152237668633461,
                      'adv/std': 1.0579134225845337,
                      'diversity/distinct_1': 0.8690476190476191,
                      'diversity/distinct_2': 1.0,
                      'diversity/repeat_ngram_frac': 0.0,
                      'entropy/policy_mean': 5.056424140930176,
                      'kl/ref_k1': 0.0957697331905365,
                      'kl/ref_k2': 0.06616869568824768,
                      'kl/ref_k3': 0.05695537105202675,
                      'kl_ctl/coef': 0.0,
                      'length/eos_missing_frac': 0.0625,
                      'length/response_max': 12.0,
                      'length/response_mean': 6.1875,
                      'ppl/policy': 117.4972915649414,
                      'ppl/ref': 119.93743896484375,
                      'ppo/approx_kl': 0.003665472031570971,
                      'ppo/clipfrac': 0.02573831006884575,
                      'ppo/entropy_bonus': 0.05074102710932493,
                      'ppo/explained_var': -0.06795370578765869,
                      'ppo/grad_norm_critic': 3.4384201169013977,
                      'ppo/grad_norm_policy': 3.898572251200676,
                      'ppo/policy_loss': -0.1630834899842739,
                      'ppo/ptx_loss': 0.0,
                      'ppo/value_clipfrac': 0.0,
                      'ppo/value_loss': 0.557405405677855,
                      'return/mean': 0.1572844237089157,
                      'reward/proxy_mean': -4.64030647277832,
                      'reward/shaped_mean': -1.1920928955078125e-07,
                      'value/mean': 0.00504675367847085},
                     {'adv/mean': 0.23323942720890045,
                      'adv/std': 0.8696224689483643,
                      'diversity/distinct_1': 0.8303571428571429,
                      'diversity/distinct_2': 1.0,
                      'diversity/repeat_ngram_frac': 0.0,
                      'entropy/policy_mean': 5.295049667358398,
                      'kl/ref_k1': 0.2502504289150238,
                      'kl/ref_k2': 0.2638413906097412,
                      'kl/ref_k3': 0.1948232352733612,
                      'kl_ctl/coef': 0.0,
                      'length/eos_missing_frac': 0.3125,
                      'length/response_max': 12.0,
                      'length/response_mean': 7.6875,
                      'ppl/policy': 174.5457305908203,
                      'ppl/ref': 182.60777282714844,
                      'ppo/approx_kl': 0.007155867351684719,
                      'ppo/clipfrac': 0.0433612447232008,
                      'ppo/entropy_bonus': 0.05326829943805933,
                      'ppo/explained_var': -0.02496170997619629,
                      'ppo/grad_norm_critic': 2.9482758939266205,
                      'ppo/grad_norm_policy': 3.831478476524353,
                      'ppo/policy_loss': -0.16243182122707367,
                      'ppo/ptx_loss': 0.0,
                      'ppo/value_clipfrac': 0.0,
                      'ppo/value_loss': 0.37949586659669876,
                      'return/mean': 0.23555372655391693,
                      'reward/proxy_mean': -4.1002044677734375,
                      'reward/shaped_mean': -1.564621925354004e-07,
                      'value/mean': 0.0023142893332988024}],
 'ppo_max': [{'adv/mean': 4.081038795789027e-08,
              'adv/std': 0.9999999403953552,
              'diversity/distinct_1': 0.8282828282828283,
              'diversity/distinct_2': 1.0,
              'diversity/repeat_ngram_frac': 0.0,
              'entropy/policy_mean': 5.2950239181518555,
              'kl/ref_k1': 0.0,
              'kl/ref_k2': 0.0,
              'kl/ref_k3': 0.0,
              'kl_ctl/coef': 0.05,
              'length/eos_missing_frac': 0.25,
              'length/response_max': 12.0,
              'length/response_mean': 6.9375,
              'ppl/policy': 147.26145935058594,
              'ppl/ref': 147.26145935058594,
              'ppo/approx_kl': 0.018837458337657154,
              'ppo/clipfrac': 0.042840393260121346,
              'ppo/entropy_bonus': 0.0,
              'ppo/explained_var': -24.758834838867188,
              'ppo/grad_norm_critic': 107.81432342529297,
              'ppo/grad_norm_policy': 14.213807106018066,
              'ppo/policy_loss': 0.0023277373984456062,
              'ppo/ptx_loss': 7.081662178039551,
              'ppo/value_clipfrac': 0.288452735170722,
              'ppo/value_loss': 7.2033010721206665,
              'pretrain/ppo/explained_var': -18.093364715576172,
              'pretrain/ppo/grad_norm_critic': 93.24547863006592,
              'pretrain/ppo/value_clipfrac': 0.22110389173030853,
              'pretrain/ppo/value_loss': 5.542612195014954,
              'return/mean': 0.15344427525997162,
              'reward/proxy_mean': -4.3651323318481445,
              'reward/shaped_mean': 0.13761591911315918,
              'value/mean': -0.926957368850708},
             {'adv/mean': 1.9868215517249155e-08,
              'adv/std': 1.0,
              'diversity/distinct_1': 0.78125,
              'diversity/distinct_2': 1.0,
              'diversity/repeat_ngram_frac': 0.0,
              'entropy/policy_mean': 5.339010715484619,
              'kl/ref_k1': 0.41312527656555176,
              'kl/ref_k2': 0.20985014736652374,
              'kl/ref_k3': 0.15491336584091187,
              'kl_ctl/coef': 0.05,
              'length/eos_missing_frac': 0.375,
              'length/response_max': 12.0,
              'length/response_mean': 8.625,
              'ppl/policy': 188.28759765625,
              'ppl/ref': 198.3189239501953,
              'ppo/approx_kl': 0.0034035485878121108,
              'ppo/clipfrac': 0.017966280225664377,
              'ppo/entropy_bonus': 0.0,
              'ppo/explained_var': -10.12990665435791,
              'ppo/grad_norm_critic': 92.96180534362793,
              'ppo/grad_norm_policy': 12.130582809448242,
              'ppo/policy_loss': -0.006604021647945046,
              'ppo/ptx_loss': 6.4849419593811035,
              'ppo/value_clipfrac': 0.20194942131638527,
              'ppo/value_loss': 5.905463457107544,
              'return/mean': 0.31161773204803467,
              'reward/proxy_mean': -4.240323066711426,
              'reward/shaped_mean': 0.1408909112215042,
              'value/mean': 0.08537160605192184},
             {'adv/mean': 2.103693397259576e-08,
              'adv/std': 1.0,
              'diversity/distinct_1': 0.8333333333333334,
              'diversity/distinct_2': 1.0,
              'diversity/repeat_ngram_frac': 0.0,
              'entropy/policy_mean': 5.321054458618164,
              'kl/ref_k1': 0.15294557809829712,
              'kl/ref_k2': 0.06455875188112259,
              'kl/ref_k3': 0.05762699991464615,
              'kl_ctl/coef': 0.05,
              'length/eos_missing_frac': 0.375,
              'length/response_max': 12.0,
              'length/response_mean': 8.5,
              'ppl/policy': 187.05784606933594,
              'ppl/ref': 191.21896362304688,
              'ppo/approx_kl': 0.0029670010117115453,
              'ppo/clipfrac': 0.02547047403641045,
              'ppo/entropy_bonus': 0.0,
              'ppo/explained_var': -4.092386722564697,
              'ppo/grad_norm_critic': 82.36230754852295,
              'ppo/grad_norm_policy': 11.518808603286743,
              'ppo/policy_loss': -0.01262340834364295,
              'ppo/ptx_loss': 5.8974655866622925,
              'ppo/value_clipfrac': 0.23087436519563198,
              'ppo/value_loss': 5.319036841392517,
              'return/mean': 0.5993704199790955,
              'reward/proxy_mean': -3.10817289352417,
              'reward/shaped_mean': 0.420661598443985,
              'value/mean': 0.09928218275308609}],
 'trl_like': [{'adv/mean': -3.1370866793167806e-08,
               'adv/std': 0.9999999403953552,
               'diversity/distinct_1': 0.9333333333333333,
               'diversity/distinct_2': 1.0,
               'diversity/repeat_ngram_frac': 0.0,
               'entropy/policy_mean': 4.43789529800415,
               'kl/ref_k1': 0.0,
               'kl/ref_k2': 0.0,
               'kl/ref_k3': 0.0,
               'kl_ctl/coef': 0.05,
               'length/eos_missing_frac': 0.0,
               'length/response_max': 12.0,
               'length/response_mean': 4.75,
               'ppl/policy': 87.96307373046875,
               'ppl/ref': 87.96307373046875,
               'ppo/approx_kl': 0.15281443035928532,
               'ppo/clipfrac': 0.0718988236039877,
               'ppo/entropy_bonus': 0.0,
               'ppo/explained_var': -24.291973114013672,
               'ppo/grad_norm_critic': 156.75641584396362,
               'ppo/grad_norm_policy': 9.322327315807343,
               'ppo/policy_loss': -0.07537126541137695,
               'ppo/ptx_loss': 0.0,
               'ppo/value_clipfrac': 0.5128782615065575,
               'ppo/value_loss': 14.177542567253113,
               'return/mean': -4.650232315063477,
               'reward/proxy_mean': -5.201603889465332,
               'reward/shaped_mean': -5.201603889465332,
               'value/mean': -0.597623348236084},
              {'adv/mean': 5.285695081624908e-08,
               'adv/std': 1.0,
               'diversity/distinct_1': 0.8571428571428571,
               'diversity/distinct_2': 1.0,
               'diversity/repeat_ngram_frac': 0.0,
               'entropy/policy_mean': 4.932433128356934,
               'kl/ref_k1': 0.28726038336753845,
               'kl/ref_k2': 0.17142733931541443,
               'kl/ref_k3': 0.13247768580913544,
               'kl_ctl/coef': 0.05,
               'length/eos_missing_frac': 0.0625,
               'length/response_max': 12.0,
               'length/response_mean': 6.625,
               'ppl/policy': 116.66790008544922,
               'ppl/ref': 122.40570831298828,
               'ppo/approx_kl': 0.010623883834341541,
               'ppo/clipfrac': 0.0349982101470232,
               'ppo/entropy_bonus': 0.0,
               'ppo/explained_var': -12.506082534790039,
               'ppo/grad_norm_critic': 136.31104946136475,
               'ppo/grad_norm_policy': 4.570147097110748,
               'ppo/policy_loss': -0.010609370656311512,
               'ppo/ptx_loss': 0.0,
               'ppo/value_clipfrac': 0.517782561480999,
               'ppo/value_loss': 11.995898485183716,
               'return/mean': -4.776853561401367,
               'reward/proxy_mean': -5.358091354370117,
               'reward/shaped_mean': -5.358091354370117,
               'value/mean': -1.1239162683486938},
              {'adv/mean': -5.9067666313694644e-09,
               'adv/std': 1.0,
               'diversity/distinct_1': 0.83,
               'diversity/distinct_2': 1.0,
               'diversity/repeat_ngram_frac': 0.0,
               'entropy/policy_mean': 5.1135478019714355,
               'kl/ref_k1': 0.910187840461731,
               'kl/ref_k2': 1.6110920906066895,
               'kl/ref_k3': 0.742273211479187,
               'kl_ctl/coef': 0.05,
               'length/eos_missing_frac': 0.3125,
               'length/response_max': 12.0,
               'length/response_mean': 6.9375,
               'ppl/policy': 154.2091827392578,
               'ppl/ref': 198.20518493652344,
               'ppo/approx_kl': 0.007796471007168293,
               'ppo/clipfrac': 0.032504936680197716,
               'ppo/entropy_bonus': 0.0,
               'ppo/explained_var': -6.3666791915893555,
               'ppo/grad_norm_critic': 138.94796466827393,
               'ppo/grad_norm_policy': 5.030841767787933,
               'ppo/policy_loss': 0.024241158738732338,
               'ppo/ptx_loss': 0.0,
               'ppo/value_clipfrac': 0.3166219312697649,
               'ppo/value_loss': 8.204276323318481,
               'return/mean': -3.507692575454712,
               'reward/proxy_mean': -4.226865768432617,
               'reward/shaped_mean': -4.226865768432617,
               'value/mean': -2.698359251022339}]}
