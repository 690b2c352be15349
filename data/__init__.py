"""Images on disk: finding datasets (``discovery``), the benchmark registry (``benchmarks``),
decoding and the unusable-image rule (``images``), augmentations and transforms
(``augment``, ``transforms``), datasets / samplers / loaders (``loaders``), the decoded-image
cache (``cache``), robustness perturbations (``perturb``) and the NPR-mini builder (``mini``)."""
