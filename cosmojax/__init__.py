"""cosmojax: composable JAX/Flax mixed reinforcement learning for multimodal reasoning models.

Subpackages (see README.md, "Architecture"):
  models     Flax NNX backbones (Qwen2.5-VL), checkpoints, reward/value heads
  data       grain sources, mixtures, chat templates, jailbreak augmentation, synthetic suite
  rollout    the sampler behind a small engine interface
  rewards    reward API, registry and the reward terms of the three recipes
  rl         advantage estimators, policy losses, the RL learner
  sft, rm    supervised fine-tuning; reward-model training
  parallel   meshes, logical axis rules, sharding
  inference  value-guided intervention and step-verified deliberative search
  eval       metrics and benchmark runners
"""

__version__ = "0.1.0"
