"""Images on disk: finding datasets (``discovery``), the benchmark's facts (``benchmarks``:
suites, generators, published counts, sources), decoding and the unusable-image rule
(``images``), augmentations and transforms (``augment``, ``transforms``), datasets / samplers /
loaders (``loaders``), the decoded-image cache (``cache``) and robustness perturbations
(``perturb``). The command-line tools (download, verify, the NPR-mini builder) are in ``tools/``."""
