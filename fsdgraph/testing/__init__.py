"""Tools for testing fsdgraph and its plugins: local AWS-API servers (a Lambda invoke endpoint in
front of moto, :mod:`fsdgraph.testing.lambda_endpoint`; both started together by
:mod:`fsdgraph.testing.aws_servers`).

Nothing here is part of the runtime: no runtime module imports this subpackage, and the Lambda
function package leaves it out. Its modules need the ``test`` extra (moto, botocore).
"""
