"""Tools for testing fsdgraph and its plugins: local AWS-API servers (a Lambda invoke endpoint in
front of moto, :mod:`fsdgraph.testing.lambda_endpoint`; both started together by
:mod:`fsdgraph.testing.aws_servers`); conformance suites for plugins (transports:
:mod:`fsdgraph.testing.transports`; backends and channels: :mod:`fsdgraph.testing.conformance`).

Nothing here is part of the runtime: no runtime module imports this subpackage, and the Lambda
function package leaves it out. Its modules need the ``test`` extra (moto, botocore).
"""
