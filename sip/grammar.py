"""RFC 3261 §25 ABNF as regex fragments (in the manner of h11's ``_abnf.py``).

Why our own grammar rather than ``sipmessage``: its ``Message.parse`` has no line folding,
no Content-Length framing and no size limit, merges repeated headers out of order, splits
parameters on ';' inside quoted strings and rewrites their quoting (so unknown text is not
kept exactly), and its URI pattern has no ``?headers``. Those are exactly the cases RFC 4475
tortures, so the fragments below are written from the ABNF, which is quoted beside each.

Fragments are plain strings (no capturing groups) so they compose; callers compile the
patterns they need. Header text is handled after unfolding, so LWS reduces to WSP here.
"""

from __future__ import annotations

import re

# WSP = SP / HTAB ; LWS = [*WSP CRLF] 1*WSP ; SWS = [LWS]   (after unfolding: WSP runs)
WSP = r"[ \t]"
LWS = r"[ \t]+"
SWS = r"[ \t]*"

# alphanum = ALPHA / DIGIT
ALPHANUM = r"[A-Za-z0-9]"
# escaped = "%" HEXDIG HEXDIG
ESCAPED = r"%[0-9A-Fa-f]{2}"
# mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
# unreserved = alphanum / mark
UNRESERVED_CHARS = r"A-Za-z0-9\-_.!~*'()"

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = rf"[{TOKEN_CHARS}]+"

# word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" /
#        "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}" )
WORD = r"""[A-Za-z0-9\-.!%*_+`'~()<>:\\"/\[\]?{}]+"""

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
QDTEXT = r"[ \t\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]"
QUOTED_PAIR = r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]"
QUOTED_STRING = rf'"(?:{QDTEXT}|{QUOTED_PAIR})*"'

# hostname = *( domainlabel "." ) toplabel [ "." ]
# domainlabel = alphanum / alphanum *( alphanum / "-" ) alphanum
# toplabel = ALPHA / ALPHA *( alphanum / "-" ) alphanum
# (relaxed: '_' allowed and a label may start with a digit, as deployed DNS names do)
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_\-]*[A-Za-z0-9])?"
HOSTNAME = rf"{LABEL}(?:\.{LABEL})*\.?"
# IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
IPV4 = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
# IPv6reference = "[" IPv6address "]"   (the address itself is checked with ipaddress)
IPV6_REFERENCE = r"\[[0-9A-Fa-f:.]+\]"
# host = hostname / IPv4address / IPv6reference
HOST = rf"(?:{IPV6_REFERENCE}|{HOSTNAME})"
# port = 1*DIGIT
PORT = r"[0-9]+"

# user = 1*( unreserved / escaped / user-unreserved )
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
USER = rf"(?:[{UNRESERVED_CHARS}&=+$,;?/]|{ESCAPED})+"
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
PASSWORD = rf"(?:[{UNRESERVED_CHARS}&=+$,]|{ESCAPED})*"

# uri-parameter = ... / other-param ; other-param = pname [ "=" pvalue ]
# pname = 1*paramchar ; pvalue = 1*paramchar
# paramchar = param-unreserved / unreserved / escaped
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
PARAMCHAR = rf"(?:[{UNRESERVED_CHARS}\[\]/:&+$]|{ESCAPED})"
URI_PARAM = rf"{PARAMCHAR}+(?:={PARAMCHAR}+)?"
# header = hname "=" hvalue ; hname = 1*( hnv-unreserved / unreserved / escaped )
# hvalue = *( hnv-unreserved / unreserved / escaped )
# hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
HNVCHAR = rf"(?:[{UNRESERVED_CHARS}\[\]/?:+$]|{ESCAPED})"
URI_HEADER = rf"{HNVCHAR}+={HNVCHAR}*"

# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
# userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
# hostport = host [ ":" port ] ; uri-parameters = *( ";" uri-parameter )
# headers = "?" header *( "&" header )
SIP_URI = re.compile(
    rf"(?P<scheme>[Ss][Ii][Pp][Ss]?):"
    rf"(?:(?P<user>{USER})(?::(?P<password>{PASSWORD}))?@)?"
    rf"(?P<host>{HOST})(?::(?P<port>{PORT}))?"
    rf"(?P<params>(?:;{URI_PARAM})*)"
    rf"(?:\?(?P<headers>{URI_HEADER}(?:&{URI_HEADER})*))?"
)

# absoluteURI = scheme ":" ( hier-part / opaque-part )
# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
# (any URI character except separators that end a URI inside a header: SP, '<', '>', '"')
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
ABSOLUTE_URI = re.compile(rf"(?P<scheme>{SCHEME}):(?P<rest>[^\s<>\"]+)")

# generic-param = token [ EQUAL gen-value ] ; gen-value = token / host / quoted-string
# (host is covered by token except for IPv6 references)
GEN_VALUE = rf"(?:{TOKEN}|{IPV6_REFERENCE}|{QUOTED_STRING})"
GENERIC_PARAM = re.compile(rf"{SWS}(?P<name>{TOKEN})(?:{SWS}={SWS}(?P<value>{GEN_VALUE}))?{SWS}")

# sent-protocol = protocol-name SLASH protocol-version SLASH transport
# SLASH = SWS "/" SWS ; sent-by = host [ COLON port ] ; COLON = SWS ":" SWS
# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
VIA_HEAD = re.compile(
    rf"{SWS}(?P<name>{TOKEN}){SWS}/{SWS}(?P<version>{TOKEN}){SWS}/{SWS}(?P<transport>{TOKEN})"
    rf"{LWS}(?P<host>{HOST})(?:{SWS}:{SWS}(?P<port>{PORT}))?{SWS}"
)

# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT
# display-name = *(token LWS)/ quoted-string
DISPLAY_NAME = rf"(?:{QUOTED_STRING}|(?:{TOKEN}(?:{LWS}{TOKEN})*))"
NAME_ADDR = re.compile(rf"{SWS}(?P<display>{DISPLAY_NAME})?{SWS}<(?P<uri>[^<>\s]*)>{SWS}")

# field-name = token ; HCOLON = *( SP / HTAB ) ":" SWS
HEADER_LINE = re.compile(rf"(?P<name>{TOKEN})[ \t]*:[ \t]*(?P<value>.*?)[ \t]*", re.DOTALL)
# Method = INVITEm / ... / extension-method ; extension-method = token
METHOD = re.compile(TOKEN)
# Request-Line = Method SP Request-URI SP SIP-Version CRLF
REQUEST_LINE = re.compile(rf"(?P<method>{TOKEN}) (?P<uri>[^ \t]+) (?P<version>[^ \t]+)")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
# Status-Code = 3DIGIT ; Reason-Phrase = *(reserved / unreserved / escaped / UTF8 / SP / HTAB)
STATUS_LINE = re.compile(r"(?P<version>SIP/[^ \t]+) (?P<status>[0-9]{3})(?: (?P<reason>[^\r\n]*))?")
# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT  (only 2.0 is spoken)
SIP_VERSION = "SIP/2.0"

TOKEN_RE = re.compile(TOKEN)
QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)


def unquote(text: str) -> str:
    """The content of a quoted-string with its quoted-pairs resolved."""
    return QUOTED_PAIR_RE.sub(r"\1", text[1:-1])


_NEEDS_PAIR = re.compile(r'[\x00-\x08\x0b\x0c\x0e-\x1f\x7f"\\]')


def quote(text: str) -> str:
    """``text`` as a quoted-string: '"', '\\' and controls go as quoted-pairs (CR and LF
    cannot be carried at all; callers refuse them)."""
    return '"' + _NEEDS_PAIR.sub(lambda m: "\\" + m[0], text) + '"'
