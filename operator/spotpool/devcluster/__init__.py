"""spotpool.devcluster."""
