//! Why a directive lb does not translate has no equivalent: the reason each report line gives.

/// Why a directive lb does not translate has no equivalent.
pub fn reason(name: &str) -> &'static str {
    match name {
        "maxrequestsperchild" | "maxconnectionsperchild" => {
            "lb is one process with no children to recycle"
        }
        "startservers" | "serverlimit" | "threadsperchild" | "minsparethreads"
        | "maxsparethreads" | "minspareservers" | "maxspareservers" | "threadlimit" => {
            "lb runs one event loop per core; there are no servers or threads to size"
        }
        "user" | "group" => {
            "run lb as a user with systemd's User= (deploy/lb.service); it needs CAP_NET_BIND_SERVICE, not root"
        }
        "pidfile" | "mutex" | "defaultruntimedir" => {
            "lb keeps no pid file or lock files; systemd tracks the process"
        }
        "errorlog" | "loglevel" => {
            "lb's own log goes to stderr (the journal under systemd); set its level with RUST_LOG"
        }
        "logformat" => "lb's access log formats are combined (with lb's fields) and json",
        "documentroot" | "directory" | "directorymatch" | "files" | "filesmatch" | "alias"
        | "scriptalias" | "directoryindex" | "options" | "allowoverride" | "accessfilename"
        | "addtype" | "addhandler" | "typesconfig" | "mimemagicfile" | "adddefaultcharset" => {
            "lb serves no files; it only forwards"
        }
        "rewriteengine" | "rewriterule" | "rewritecond" | "rewritemap" | "redirect"
        | "redirectmatch" | "proxypassmatch" | "locationmatch" | "aliasmatch" => {
            "lb routes by path prefix only (longest [[listener.proxy_pass]] wins); no regex routing or rewriting"
        }
        "proxypassreversecookiedomain" | "proxypassreversecookiepath" => {
            "lb rewrites Location, Content-Location and URI only"
        }
        "hostnamelookups" | "usecanonicalname" | "servertokens" | "serversignature"
        | "traceenable" | "serveradmin" | "errordocument" => {
            "no lb equivalent (lb answers errors itself with a short text body)"
        }
        "balancerinherit"
        | "proxystatus"
        | "proxyvia"
        | "proxyerroroverride"
        | "proxyaddheaders"
        | "proxyhctpsize"
        | "heartbeatstorage"
        | "heartbeatmaxservers"
        | "enablesendfile"
        | "enablemmap"
        | "protocols"
        | "h2direct"
        | "acceptfilter" => "already lb's behaviour or no lb equivalent",
        "requestheader" => {
            "lb sends the BALANCER_* values as X-Balancer-* headers with balancer_headers = true; other request header edits have no equivalent"
        }
        "setenv" | "setenvif" | "unsetenv" | "passenv" => {
            "lb has no environment variables per request"
        }
        "require" | "order" | "allow" | "deny" | "satisfy" | "authtype" | "authname"
        | "authuserfile" => "lb has no access rules on its public listeners",
        "sethandler" | "addoutputfilterbytype" | "setoutputfilter" | "setinputfilter" => {
            "lb has no handlers or filters"
        }
        _ => "no lb equivalent",
    }
}
