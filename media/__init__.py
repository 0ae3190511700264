"""Media relay core: port pool, SDP model and Microsoft rewriting, ICE/RTP/SRTP relay."""
