"""The AWS backend's transports: S3 as the object store, SNS topics fanning out to SQS queues as
the message service (see :mod:`fsdgraph.backends.aws.transports`).

Compute (Lambda) and provisioning come later.
"""
