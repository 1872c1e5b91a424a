"""The canary release (design section 6), split the way Flagger's controller is:

- ``controller``: the state machine (states, handler table, transitions, crash recovery);
- ``steps``: the progressive traffic steps and the move each analysis interval makes (pure);
- ``control``: pause / resume / abort / promote-now from another process, and ``release --status``;
- ``checks``: the criteria as data (figure, threshold or comparison with stable, minimum sample;
  the quality check's two-proportion test);
- ``quality``: model quality online (the event log's lists, attributed by provenance) as figures;
- ``metrics``: one PromQL query per figure, per role and version (Prometheus);
- ``deploy``: moving a slot to a version, and the stable version (``version.txt``, committed);
- ``router``: the share of traffic NGINX sends to the canary;
- ``state``: the state file, the result and the lock;
- ``recorder``: the ``releases`` row;
- ``wiring``: settings in, a controller with its real collaborators out;
- ``cli``: ``python -m auto_deployment release``.

The notices it sends are rendered by ``auto_deployment.notices``.
"""
