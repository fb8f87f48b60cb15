"""The drop-in Alpaca gateway (issue 35): execd speaks Alpaca's Trading API v2 on
loopback, so an alpaca-py strategy changes one argument (docs/gateway.md)."""
