"""Reward-model training and learned-verifier scoring.

    from cosmojax import models, rm
    model = models.RewardModel(models.from_pretrained(lm_dir), rngs=nnx.Rngs(0))
    model, history = rm.train_reward_model(model, tokenizer, pairs, rm.RMTrainConfig())
    rm.pairwise_accuracy(rm.RewardScorer(model, tokenizer), held_out_pairs)
    judge = rm.GenerativeJudge(models.from_pretrained(judge_dir), tokenizer)
    p_yes = judge(requests, responses)                     # [N] P(yes)

  data      PreferencePair / LabeledResponse, the scored-sequence format, static batches
  losses    Bradley-Terry (pairwise) and BCE (pointwise) losses, masked
  train     the pure jitted step (state, batch, rng) -> (state, metrics) and the driver
  scoring   RewardScorer: jitted batched rewards; pairwise_accuracy
  judge     GenerativeJudge: P(yes) of a causal LM after a judge template

The models (`RewardModel`, `ValueModel`, `save_reward_model`, `load_reward_model`) live in
`cosmojax.models.heads`; the reward functions over them in `cosmojax.rewards.learned`.
"""

from cosmojax.rm.data import (LabeledResponse, PairwiseBatch, PointwiseBatch, PreferencePair,
                              SequenceEncoder, collate_pairs, collate_pointwise, pad_rows,
                              text_messages)
from cosmojax.rm.judge import (DEFAULT_NO, DEFAULT_TEMPLATE, DEFAULT_YES, GenerativeJudge,
                               answer_token_ids, fill_template, template_fields,
                               yes_probability)
from cosmojax.rm.losses import bradley_terry_loss, pointwise_loss
from cosmojax.rm.scoring import DEFAULT_LENGTH_BUCKETS, RewardScorer, pairwise_accuracy
from cosmojax.rm.train import (RMTrainConfig, RMTrainState, init_train_state,
                               learning_rate_schedule, make_optimizer, make_train_step, rm_loss,
                               train_reward_model, trainable_filter)
