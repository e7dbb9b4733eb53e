"""spotpool.api."""
