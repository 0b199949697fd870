"""Wall time of the embedded simulator at its default size (target: <= 10 s on a 2-core machine)."""

import time

import vclib as vc

start = time.perf_counter()
adata = vc.loaders.simulate()
elapsed = time.perf_counter() - start
print(f"simulate() default design: {adata.n_obs:,} cells x {adata.n_vars} genes, "
      f"{adata.obs.groupby(['context', 'perturbation'], observed=True).ngroups} conditions: {elapsed:.1f} s "
      f"(target <= 10 s)")
