/* A libpurple plugin for the test suite: the user's hands on pidgin's call window.
 *
 * libpurple's D-Bus API has no media object, so a test cannot press "Accept" or "Hang up".
 * This plugin accepts every incoming call at the moment pidgin would show its Accept button
 * (a new stream from a remote initiator), hangs up the account's calls when the user sends
 * the IM "autoanswer:hangup" (swallowed, never sent), and logs each media state change and
 * stream info, and each sign-on, sign-off and connection error (with libpurple's reason) to
 * the debug log, so the test can wait on them. Built at test time against
 * libpurple-dev (tests/peers/pidgin.py), loaded from CONFIGDIR/plugins. Named autoanswer:
 * pidgin ships an "autoaccept" plugin of its own (for file transfers), which would shadow it.
 */
#define PURPLE_PLUGINS

#include <string.h>

#include <glib.h>
#include <glib-object.h>
#include <gmodule.h>

#include <connection.h>
#include <conversation.h>
#include <debug.h>
#include <media.h>
#include <mediamanager.h>
#include <plugin.h>
#include <signals.h>
#include <version.h>

#define TAG "autoanswer"
#define HANGUP_COMMAND "autoanswer:hangup"

static const char *state_name(PurpleMediaState state)
{
	switch (state) {
	case PURPLE_MEDIA_STATE_NEW: return "new";
	case PURPLE_MEDIA_STATE_CONNECTED: return "connected";
	case PURPLE_MEDIA_STATE_END: return "end";
	}
	return "?";
}

static gboolean accept_call(gpointer data)
{
	PurpleMedia *media = data;
	purple_debug_info(TAG, "accepting the call\n");
	purple_media_stream_info(media, PURPLE_MEDIA_INFO_ACCEPT, NULL, NULL, TRUE);
	g_object_unref(media);
	return FALSE;
}

static void state_changed(PurpleMedia *media, PurpleMediaState state, gchar *sid,
                          gchar *name, gpointer data)
{
	gboolean incoming = !purple_media_is_initiator(media, NULL, NULL);
	purple_debug_info(TAG, "media state %s session %s participant %s (%s)\n",
	                  state_name(state), sid ? sid : "-", name ? name : "-",
	                  incoming ? "incoming" : "outgoing");
	/* The moment pidgin's window offers Accept; accepted from the main loop, as a click is. */
	if (state == PURPLE_MEDIA_STATE_NEW && sid != NULL && name != NULL && incoming &&
	    g_object_get_data(G_OBJECT(media), TAG) == NULL) {
		g_object_set_data(G_OBJECT(media), TAG, GINT_TO_POINTER(1));
		g_idle_add(accept_call, g_object_ref(media));
	}
}

static void stream_info(PurpleMedia *media, PurpleMediaInfoType type, gchar *sid,
                        gchar *name, gboolean local, gpointer data)
{
	purple_debug_info(TAG, "stream info %d session %s participant %s %s\n", (int)type,
	                  sid ? sid : "-", name ? name : "-", local ? "local" : "remote");
}

static gboolean init_media(PurpleMediaManager *manager, PurpleMedia *media,
                           PurpleAccount *account, gchar *who, gpointer data)
{
	purple_debug_info(TAG, "new media session with %s\n", who ? who : "-");
	g_signal_connect(G_OBJECT(media), "state-changed", G_CALLBACK(state_changed), NULL);
	g_signal_connect(G_OBJECT(media), "stream-info", G_CALLBACK(stream_info), NULL);
	return TRUE; /* FALSE would refuse the session */
}

static void sending_im(PurpleAccount *account, const char *receiver, char **message,
                       gpointer data)
{
	GList *calls, *item;
	if (message == NULL || *message == NULL || strstr(*message, HANGUP_COMMAND) == NULL)
		return;
	g_free(*message);
	*message = NULL; /* a command to us, not a message to send */
	calls = purple_media_manager_get_media_by_account(purple_media_manager_get(), account);
	purple_debug_info(TAG, "hanging up %u call(s)\n", g_list_length(calls));
	for (item = calls; item != NULL; item = item->next)
		purple_media_stream_info(PURPLE_MEDIA(item->data), PURPLE_MEDIA_INFO_HANGUP,
		                         NULL, NULL, TRUE);
	g_list_free(calls);
}

static void signed_on(PurpleConnection *gc, gpointer data)
{
	purple_debug_info(TAG, "signed on %s\n",
	                  purple_account_get_username(purple_connection_get_account(gc)));
}

static void signed_off(PurpleConnection *gc, gpointer data)
{
	purple_debug_info(TAG, "signed off %s\n",
	                  purple_account_get_username(purple_connection_get_account(gc)));
}

static void connection_error(PurpleConnection *gc, PurpleConnectionError error,
                             const gchar *description, gpointer data)
{
	purple_debug_info(TAG, "connection error %d: %s\n", (int)error,
	                  description ? description : "-");
}

static gboolean plugin_load(PurplePlugin *plugin)
{
	void *connections = purple_connections_get_handle();
	purple_signal_connect(connections, "signed-on", plugin, PURPLE_CALLBACK(signed_on), NULL);
	purple_signal_connect(connections, "signed-off", plugin, PURPLE_CALLBACK(signed_off), NULL);
	purple_signal_connect(connections, "connection-error", plugin,
	                      PURPLE_CALLBACK(connection_error), NULL);
	g_signal_connect(G_OBJECT(purple_media_manager_get()), "init-media",
	                 G_CALLBACK(init_media), NULL);
	purple_signal_connect(purple_conversations_get_handle(), "sending-im-msg", plugin,
	                      PURPLE_CALLBACK(sending_im), NULL);
	/* Never unmapped while pidgin runs: GLib may still hold pending idle callbacks. */
	if (plugin->handle != NULL)
		g_module_make_resident(plugin->handle);
	purple_debug_info(TAG, "loaded\n");
	return TRUE;
}

static gboolean plugin_unload(PurplePlugin *plugin)
{
	PurpleMediaManager *manager = purple_media_manager_get();
	GList *item;

	g_signal_handlers_disconnect_by_func(G_OBJECT(manager), G_CALLBACK(init_media), NULL);
	/* Calls still around (pidgin quitting) must not call into this unloaded code. */
	for (item = purple_media_manager_get_media(manager); item != NULL; item = item->next) {
		g_signal_handlers_disconnect_by_func(item->data, G_CALLBACK(state_changed), NULL);
		g_signal_handlers_disconnect_by_func(item->data, G_CALLBACK(stream_info), NULL);
	}
	return TRUE;
}

static PurplePluginInfo info = {
	PURPLE_PLUGIN_MAGIC, PURPLE_MAJOR_VERSION, PURPLE_MINOR_VERSION,
	PURPLE_PLUGIN_STANDARD, NULL, 0, NULL, PURPLE_PRIORITY_DEFAULT,
	"core-gateway-test-autoanswer", "Test auto-answer", "1.0",
	"Accepts incoming calls and hangs up on command (test suite)",
	"Accepts incoming calls and hangs up on command (test suite)",
	"gateway emulator tests", NULL,
	plugin_load, plugin_unload, NULL, NULL, NULL, NULL, NULL,
	NULL, NULL, NULL, NULL
};

static void init_plugin(PurplePlugin *plugin)
{
}

PURPLE_INIT_PLUGIN(autoanswer, init_plugin, info)
