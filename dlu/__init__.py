"""The ``dlu`` command line: a thin dispatcher onto the project's packages."""
