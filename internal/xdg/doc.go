// Package xdg finds the application a freedesktop desktop opens a file with, and starts it
// without going through xdg-open, so that a program which is itself registered as the
// default application (isoctl open, through isolator-open.desktop) can hand a file on to
// the application that would have opened it otherwise, and never to itself.
//
// It implements, from the files on disk and with no desktop or D-Bus session needed:
//
//   - the file's MIME type (MIMEDB.TypeOfFile), per the shared-mime-info specification's
//     recommended checking order: the globs2 files of $XDG_DATA_HOME/mime and
//     $XDG_DATA_DIRS/mime decide when they agree; otherwise the content is sniffed (with
//     github.com/gabriel-vasile/mimetype, the sniffer pkg/policy uses) and a glob type
//     that is, or is a subclass of, the sniffed type wins, then the glob of highest
//     weight. Aliases and the subclasses files give canonical names and parent types;
//   - the default and associated applications of a MIME type (Resolver.Find), per the
//     XDG MIME Applications specification 1.0.1: the [Default Applications] of every
//     mimeapps.list (desktop-specific $desktop-mimeapps.list first) in
//     $XDG_CONFIG_HOME, $XDG_CONFIG_DIRS, $XDG_DATA_HOME/applications and
//     $XDG_DATA_DIRS/applications, then the associations: [Added Associations] minus
//     [Removed Associations], level by level, and the MimeType= of the desktop files of
//     each applications directory (mimeinfo.cache gives their order), then the same for
//     the parent types (text/plain for text/*);
//   - the desktop entries themselves (desktop file IDs, Hidden=, TryExec=, Type=), and
//     their Exec= lines with the Desktop Entry specification's quoting, escapes and field
//     codes (ParseExec, Entry.Commands);
//   - starting the application detached (App.Launch): a new session, standard input and
//     output on /dev/null, no shell, the working directory only from Path=.
//
// Everything it reads is controlled by users and packages, so the parsers never panic on
// malformed input (there are fuzz tests) and a broken file only removes the entries it
// would have contributed.
package xdg
