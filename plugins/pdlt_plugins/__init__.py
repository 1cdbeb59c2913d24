"""pdlt's built-in plugins: activations, closed-form Gaussian expectations, architectures,
learning algorithms and observables.

Every module here is an ordinary pluggy plugin, registered by name through
``pdlt.plugins.DEFAULT_PLUGINS`` exactly as a third-party plugin is registered through the
``pdlt`` entry-point group.
"""
