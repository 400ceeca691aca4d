"""attnlrp inside the tools people already use: captum and inseq.

Each integration is its own module and imports its library only when that module is imported, so that
``import attnlrp`` (and this package) never needs them:

- ``attnlrp.integrations.captum.AttnLRP``: a captum attribution (``attribute(inputs, target=…)``) that also runs
  inside captum's ``LLMGradientAttribution`` (``pip install 'attnlrp[captum]'``);
- ``attnlrp.integrations.inseq``: importing it registers the ``"attnlrp"`` method in inseq's registry, so that
  ``inseq.load_model(model, "attnlrp", tokenizer=…)`` works (``pip install 'attnlrp[inseq]'``).

A missing library fails with a ``MissingExtraError`` that names the extra to install.
"""
