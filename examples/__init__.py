"""revgw's two demo services, installed as ``revgw_examples``: a server and a producer."""
