"""The optional compiled kernel of the detectors (all metadata is in pyproject.toml).

``flowdeck.pipeline._kernel`` is built from ``pipeline/_kernel.pyx`` with Cython when a C
compiler is there; ``optional=True`` lets the install go on without it, and
``flowdeck.pipeline.detectors`` then runs its pure-Python reference (``detectors.KERNEL``
says which is in use).
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython (an sdist built without it): install the pure-Python path
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("flowdeck.pipeline._kernel", ["pipeline/_kernel.pyx"], optional=True,
                   # the same IEEE arithmetic as Python's floats: no fused multiply-add
                   extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math"])],
        language_level=3, quiet=True)
    for ext in ext_modules:  # cythonize() makes new Extensions: keep them optional
        ext.optional = True

setup(ext_modules=ext_modules)
