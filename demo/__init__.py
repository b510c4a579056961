"""The demo and the sandbox wiring: the product (``concierge``) run against ``sandbox/``.

Lives outside the product packages, which never import it: a source checkout
plugs it into the ``concierge`` command through the entry points in
``pyproject.toml`` (``concierge demo``, ``concierge serve --sandbox``), and the
end-to-end tests and the benchmark import it directly. The wheel leaves it out.
"""
