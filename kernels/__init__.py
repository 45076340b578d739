"""Pallas kernels of cosmojax, each with a chunked XLA path and a plain-jnp reference.

`fused_pg_loss`: the multiobjective policy-gradient loss from hidden states and the LM head
without materializing the logits (`fused_token_logprobs` is its differentiable core).
"""

from kernels.fused_pg_loss import BACKENDS
from kernels.fused_pg_loss import BlockSizes
from kernels.fused_pg_loss import fused_pg_loss
from kernels.fused_pg_loss import fused_pg_loss_reference
from kernels.fused_pg_loss import fused_token_logprobs
from kernels.fused_pg_loss import fused_token_logprobs_reference
from kernels.fused_pg_loss import resolve_backend
