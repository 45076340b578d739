"""RL maths of cosmojax: vector-reward advantages and policy losses.

`losses` holds the contract with the fused kernel (kernels/): `PolicyLossConfig`,
`policy_loss_from_logprobs`, `token_logprobs_reference`, `multiobjective_pg_loss_reference`.
"""

from cosmojax.rl.losses import AGGREGATIONS
from cosmojax.rl.losses import KL_ESTIMATORS
from cosmojax.rl.losses import POLICY_LOSSES
from cosmojax.rl.losses import PolicyLossConfig
from cosmojax.rl.losses import aggregate
from cosmojax.rl.losses import kl_penalty
from cosmojax.rl.losses import multiobjective_pg_loss_reference
from cosmojax.rl.losses import policy_drift
from cosmojax.rl.losses import policy_loss_from_logprobs
from cosmojax.rl.losses import token_logprobs_reference
from cosmojax.rl.objectives import combine_objectives
