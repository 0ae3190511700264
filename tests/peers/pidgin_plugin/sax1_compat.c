/* LD_PRELOAD shim for the tests: lets pidgin-sipe 1.25 read XML with Debian 12's libxml2.
 *
 * sipe's XML reader (sipe-xml.c) passes libxml2 a handler marked XML_SAX2_MAGIC that fills
 * in only the SAX1 callbacks (startElement/endElement). libxml2 used to parse with SAX1 for
 * such a handler; Debian 12's 2.9.14 (seen with +dfsg-1.3~deb12u4, deb12u5 and
 * deb12u6) lets the magic alone select SAX2, whose element callbacks sipe leaves NULL: every
 * document then parses "successfully" into nothing, and sipe reads no provisioning (A/V
 * encryption policy, MRAS URI), roaming data or presence.
 *
 * For exactly that kind of handler (SAX2 magic, no SAX2 element callbacks, SAX1 ones set),
 * this parses with a copy marked as a SAX1 handler, as libxml2 did before; every other
 * caller is passed through untouched. pidgin-sipe itself is not changed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <libxml/parser.h>

typedef int (*parse_memory_fn)(xmlSAXHandlerPtr, void *, const char *, int);

int xmlSAXUserParseMemory(xmlSAXHandlerPtr sax, void *user_data, const char *buffer, int size)
{
	static parse_memory_fn real;
	xmlSAXHandler sax1;

	if (real == NULL)
		real = (parse_memory_fn)dlsym(RTLD_NEXT, "xmlSAXUserParseMemory");
	if (sax != NULL && sax->initialized == XML_SAX2_MAGIC &&
	    sax->startElementNs == NULL && sax->endElementNs == NULL &&
	    (sax->startElement != NULL || sax->endElement != NULL)) {
		memcpy(&sax1, sax, sizeof(sax1));
		sax1.initialized = 1; /* a SAX1 handler: startElement/endElement are used */
		return real(&sax1, user_data, buffer, size);
	}
	return real(sax, user_data, buffer, size);
}
