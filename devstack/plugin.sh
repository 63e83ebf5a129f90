# shellcheck shell=bash
#
# scaph-openstack devstack plugin.
#
#   [[local|localrc]]
#   enable_plugin ceilometer https://opendev.org/openstack/ceilometer
#   enable_plugin scaph-openstack <this repository>
#
# devstack sources settings, then this file once per phase:
#
#   stack pre-install   virtiofsd, when no binary is there yet
#   stack install       setup_develop of this repository
#   stack post-config   the agent's configuration, then the agent itself
#                       (before nova-compute starts, so the share tmpfs is
#                       there before any domain); nova-cpu.conf
#                       (compute_driver = scaphandre.LibvirtDriver and
#                       [scaphandre]), the shim linked into Nova's tree,
#                       the rootwrap filter; Ceilometer's polling.yaml
#                       and [scaphandre] snapshot_path (ceilometer-acompute),
#                       its gnocchi_resources.yaml and pipeline.yaml
#                       (ceilometer-anotification)
#   stack extra         Ceilometer again (see below)
#   stack test-config   Gnocchi's archive policies and resource types
#                       (scaph-openstack telemetry-setup as devstack's
#                       admin), when gnocchi-api is enabled: Gnocchi runs
#                       and ceilometer-upgrade has created the instance
#                       type (both at ceilometer's extra phase)
#   unstack             stop the agent, unmount the shares, undo the Nova
#                       and Ceilometer changes
#   clean               remove configuration, ledger and share directories
#
# The Ceilometer changes are applied at post-config and again at extra:
# whichever order the two plugins are enabled in, ceilometer-acompute
# and ceilometer-anotification (started at ceilometer's own extra phase)
# read our files.

XTRACE_SCAPH=$(set +o | grep xtrace)
set +o xtrace

SCAPH_NOVA_DRIVER=scaphandre.LibvirtDriver
SCAPH_NOVA_DEFAULT_DRIVER=libvirt.LibvirtDriver
SCAPH_ROOTWRAP_FILTER=scaph-openstack.filters

# The directory of the shim package (nova/virt/scaphandre/__init__.py).
function _scaph_nova_shim_dir {
    if [[ ! -f "$SCAPH_OPENSTACK_NOVA_SHIM_DIR/__init__.py" ]]; then
        die $LINENO "the Nova shim package is not in" \
            "$SCAPH_OPENSTACK_NOVA_SHIM_DIR (SCAPH_OPENSTACK_NOVA_SHIM_DIR)"
    fi
    echo "$SCAPH_OPENSTACK_NOVA_SHIM_DIR"
}

function _scaph_nova_shim_link {
    echo "$NOVA_DIR/nova/virt/scaphandre"
}

# virtiofsd ---------------------------------------------------------------

function scaph_install_virtiofsd {
    local path
    for path in $SCAPH_OPENSTACK_VIRTIOFSD_PATHS; do
        if [[ -x "$path" ]]; then
            echo "scaph-openstack: using virtiofsd $path"
            return
        fi
    done
    install_package virtiofsd
}

# The agent ---------------------------------------------------------------

function scaph_configure_agent {
    local conf=$SCAPH_OPENSTACK_CONF
    sudo install -d -o root -g root -m 0755 "$SCAPH_OPENSTACK_CONF_DIR"
    sudo install -d -o root -g root -m 0755 "$SCAPH_OPENSTACK_STATE_DIR"
    # A fresh file on every stack.sh, from the commented example.
    sudo install -o root -g root -m 0644 \
        "$SCAPH_OPENSTACK_DIR/etc/scaph-openstack/scaph-openstack.conf.example" \
        "$conf"
    iniset -sudo "$conf" DEFAULT debug "$ENABLE_DEBUG_LOG_LEVEL"
    iniset -sudo "$conf" agent interval "$SCAPH_OPENSTACK_INTERVAL"
    iniset -sudo "$conf" agent state_dir "$SCAPH_OPENSTACK_STATE_DIR"
    iniset -sudo "$conf" agent inventory libvirt
    iniset -sudo "$conf" agent publishers "$SCAPH_OPENSTACK_PUBLISHERS"
    iniset -sudo "$conf" energy source "$SCAPH_OPENSTACK_ENERGY_SOURCE"
    iniset -sudo "$conf" libvirt connection_uri qemu:///system
    iniset -sudo "$conf" snapshot path "$SCAPH_OPENSTACK_SNAPSHOT_PATH"
    if [[ -n "$SCAPH_OPENSTACK_SNAPSHOT_GROUP" ]]; then
        iniset -sudo "$conf" snapshot group "$SCAPH_OPENSTACK_SNAPSHOT_GROUP"
    fi
    iniset -sudo "$conf" share work_dir "$SCAPH_OPENSTACK_WORK_DIR"
    iniset -sudo "$conf" share export_dir "$SCAPH_OPENSTACK_EXPORT_DIR"
    iniset -sudo "$conf" share tag "$SCAPH_OPENSTACK_TAG"
    iniset -sudo "$conf" share manage_mounts True
}

function scaph_start_agent {
    # Root: it mounts the share tmpfs and its read-only view (through its
    # privsep daemon, forked, no sudo) and reads root-only RAPL files.
    run_process scaph-agent \
        "$SCAPH_OPENSTACK_BIN_DIR/scaph-openstack-agent --config-file $SCAPH_OPENSTACK_CONF" \
        "" root
}

function scaph_stop_agent {
    stop_process scaph-agent
}

# Both mounts are the agent's (or nova-compute's): the read-only view
# first, then the tmpfs under it. A busy view (a guest still running) is
# detached lazily: virtiofsd keeps what it has open.
function scaph_unmount_shares {
    local dir
    for dir in "$SCAPH_OPENSTACK_EXPORT_DIR" "$SCAPH_OPENSTACK_WORK_DIR"; do
        if mountpoint -q "$dir"; then
            sudo umount "$dir" || sudo umount -l "$dir"
        fi
    done
}

# Nova --------------------------------------------------------------------

function scaph_check_virt_driver {
    if [[ "$VIRT_DRIVER" != libvirt ]]; then
        die $LINENO "scaph-nova extends the libvirt driver:" \
            "VIRT_DRIVER=$VIRT_DRIVER is not supported"
    fi
}

function scaph_configure_nova {
    local shim link
    scaph_check_virt_driver
    shim=$(_scaph_nova_shim_dir) || exit 1
    link=$(_scaph_nova_shim_link)
    if [[ ! -d "$NOVA_DIR/nova/virt" ]]; then
        die $LINENO "$NOVA_DIR/nova/virt not found: is Nova installed" \
            "from source (NOVA_DIR)?"
    fi
    # Nova is installed in develop mode: nova.virt is $NOVA_DIR/nova/virt,
    # so a package installed into site-packages would never be found.
    if [[ -e "$link" && ! -L "$link" ]]; then
        die $LINENO "$link exists and is not a link: remove it"
    fi
    ln -sfn "$shim" "$link"

    iniset "$NOVA_CPU_CONF" DEFAULT compute_driver "$SCAPH_NOVA_DRIVER"
    iniset "$NOVA_CPU_CONF" scaphandre attach "$SCAPH_OPENSTACK_NOVA_ATTACH"
    iniset "$NOVA_CPU_CONF" scaphandre honor_image_property \
        "$SCAPH_OPENSTACK_NOVA_HONOR_IMAGE_PROPERTY"
    iniset "$NOVA_CPU_CONF" scaphandre tag "$SCAPH_OPENSTACK_TAG"
    iniset "$NOVA_CPU_CONF" scaphandre work_dir "$SCAPH_OPENSTACK_WORK_DIR"
    iniset "$NOVA_CPU_CONF" scaphandre export_dir "$SCAPH_OPENSTACK_EXPORT_DIR"

    # nova-compute (unprivileged) starts the scaph_openstack privsep
    # context through "sudo nova-rootwrap ... privsep-helper ...".
    sudo install -d -o root -g root -m 0755 "$NOVA_CONF_DIR/rootwrap.d"
    sudo install -o root -g root -m 0644 \
        "$SCAPH_OPENSTACK_DIR/etc/scaph-openstack/rootwrap.d/$SCAPH_ROOTWRAP_FILTER" \
        "$NOVA_CONF_DIR/rootwrap.d/$SCAPH_ROOTWRAP_FILTER"
}

function scaph_unconfigure_nova {
    local link option
    link=$(_scaph_nova_shim_link)
    if [[ -f "$NOVA_CPU_CONF" ]]; then
        if [[ "$(iniget "$NOVA_CPU_CONF" DEFAULT compute_driver)" == \
                "$SCAPH_NOVA_DRIVER" ]]; then
            iniset "$NOVA_CPU_CONF" DEFAULT compute_driver \
                "$SCAPH_NOVA_DEFAULT_DRIVER"
        fi
        for option in attach honor_image_property tag work_dir export_dir; do
            inidelete "$NOVA_CPU_CONF" scaphandre "$option"
        done
    fi
    if [[ -L "$link" ]]; then
        rm -f "$link"
    fi
    sudo rm -f "$NOVA_CONF_DIR/rootwrap.d/$SCAPH_ROOTWRAP_FILTER"
}

# Ceilometer --------------------------------------------------------------

# Runs devstack/scaph_ceilometer_yaml.py (stdlib and PyYAML): the edits of
# Ceilometer's polling.yaml, gnocchi_resources.yaml and pipeline.yaml
# below, after their checks here. Its arguments: the file kind, add or
# remove, our file, the target and (polling, gnocchi-resources)
# Ceilometer's default that the edit starts from when the target does not
# exist yet. An unchanged file is not rewritten.
function _scaph_ceilometer_yaml {
    "${PYTHON:-python3}" \
        "$SCAPH_OPENSTACK_DIR/devstack/scaph_ceilometer_yaml.py" "$@"
}

# Adds (add) or removes (remove) the polling sources of
# $SCAPH_OPENSTACK_POLLING_YAML in Ceilometer's polling.yaml, by source
# name: applying it twice changes nothing, other sources are kept.
function _scaph_edit_polling {
    local action=$1
    local target
    target=$(_scaph_ceilometer_conf_dir)/polling.yaml
    local base=${CEILOMETER_DIR:-$DEST/ceilometer}/etc/ceilometer/polling.yaml
    if [[ "$action" == remove && ! -f "$target" ]]; then
        return
    fi
    if [[ ! -f "$SCAPH_OPENSTACK_POLLING_YAML" ]]; then
        die $LINENO "$SCAPH_OPENSTACK_POLLING_YAML not found"
    fi
    _scaph_ceilometer_yaml polling "$action" \
        "$SCAPH_OPENSTACK_POLLING_YAML" "$target" "$base"
}

# Adds (add) or removes (remove) the entries of
# $SCAPH_OPENSTACK_GNOCCHI_RESOURCES in Ceilometer's gnocchi_resources.yaml:
# our archive policies (by name; any "scaph-*" one is ours too, so that a
# policy an older version of the file named is not left behind) and our
# resource entries (an entry whose metrics are all meters of our file:
# Ceilometer's own entries for the same resource types are kept). Previous
# copies of ours are taken out first, so applying it twice changes nothing;
# every other entry and key is kept.
# Without the file (devstack's Ceilometer does not install one: the
# publisher falls back to its package's copy), the merge starts from that
# copy: a file with our entries alone would drop every Ceilometer meter.
function _scaph_edit_gnocchi_resources {
    local action=$1
    local target
    target=$(_scaph_ceilometer_conf_dir)/gnocchi_resources.yaml
    local base=${CEILOMETER_DIR:-$DEST/ceilometer}/ceilometer/publisher/data/gnocchi_resources.yaml
    if [[ "$action" == remove && ! -f "$target" ]]; then
        return
    fi
    if [[ ! -f "$SCAPH_OPENSTACK_GNOCCHI_RESOURCES" ]]; then
        die $LINENO "$SCAPH_OPENSTACK_GNOCCHI_RESOURCES not found"
    fi
    if [[ ! -f "$target" && ! -f "$base" ]]; then
        die $LINENO "neither $target nor Ceilometer's default $base" \
            "exists (CEILOMETER_DIR): is Ceilometer installed?"
    fi
    _scaph_ceilometer_yaml gnocchi-resources "$action" \
        "$SCAPH_OPENSTACK_GNOCCHI_RESOURCES" "$target" "$base"
}

# Devstack's Ceilometer publishes every meter with
# "gnocchi://?archive_policy=$GNOCCHI_ARCHIVE_POLICY&...", and that
# archive_policy overrides gnocchi_resources.yaml's: our metrics would be
# created on ceilometer-low (mean only), without the "last" and "rate:sum"
# our readers use. When a gnocchi:// publisher that our meters reach has
# one, add (add) our own source and sink to $CEILOMETER_CONF_DIR's
# pipeline.yaml: our meters (those of $SCAPH_OPENSTACK_GNOCCHI_RESOURCES),
# published by the same publishers less that archive_policy, and excluded
# ("!meter") from the sources that matched them, so that each sample is
# published once. Ceilometer's own meters keep the override. remove takes
# our source, sink and exclusions out again. Idempotent.
function _scaph_edit_pipeline {
    local action=$1
    local target
    target=$(_scaph_ceilometer_conf_dir)/pipeline.yaml
    # No file: Ceilometer's packaged pipeline, a plain gnocchi://.
    if [[ ! -f "$target" ]]; then
        return
    fi
    if [[ ! -f "$SCAPH_OPENSTACK_GNOCCHI_RESOURCES" ]]; then
        die $LINENO "$SCAPH_OPENSTACK_GNOCCHI_RESOURCES not found"
    fi
    _scaph_ceilometer_yaml pipeline "$action" \
        "$SCAPH_OPENSTACK_GNOCCHI_RESOURCES" "$target"
}

# The ceilometer plugin defines these; defaults for an unstack without it.
function _scaph_ceilometer_conf_dir {
    echo "${CEILOMETER_CONF_DIR:-/etc/ceilometer}"
}

function _scaph_ceilometer_conf {
    echo "${CEILOMETER_CONF:-$(_scaph_ceilometer_conf_dir)/ceilometer.conf}"
}

function scaph_configure_ceilometer {
    mkdir -p "$(_scaph_ceilometer_conf_dir)"
    if is_service_enabled ceilometer-acompute; then
        _scaph_edit_polling add
        iniset "$(_scaph_ceilometer_conf)" scaphandre snapshot_path \
            "$SCAPH_OPENSTACK_SNAPSHOT_PATH"
    fi
    # The notification agent's gnocchi:// publisher reads it.
    if is_service_enabled ceilometer-anotification; then
        _scaph_edit_gnocchi_resources add
        _scaph_edit_pipeline add
    fi
}

function scaph_unconfigure_ceilometer {
    local conf
    conf=$(_scaph_ceilometer_conf)
    _scaph_edit_polling remove
    _scaph_edit_gnocchi_resources remove
    _scaph_edit_pipeline remove
    if [[ -f "$conf" ]] && ini_has_option "$conf" scaphandre snapshot_path; then
        inidelete "$conf" scaphandre snapshot_path
    fi
}

# Gnocchi -----------------------------------------------------------------

# Gnocchi's archive policies, the energy_zone resource type and the
# instance type's energy_source attribute: what Gnocchi needs before it
# accepts our meters. As devstack's admin (openrc's OS_* variables, read
# by keystoneauth), in a subshell so that they stay out of devstack's
# environment. Idempotent: a second stack.sh finds everything present.
function scaph_setup_gnocchi {
    local command=$SCAPH_OPENSTACK_BIN_DIR/scaph-openstack
    local openrc=$TOP_DIR/openrc
    if [[ ! -f "$openrc" ]]; then
        die $LINENO "$openrc not found (TOP_DIR): no admin credentials" \
            "for scaph-openstack telemetry-setup"
    fi
    if [[ ! -x "$command" ]]; then
        die $LINENO "$command not found (SCAPH_OPENSTACK_BIN_DIR):" \
            "is scaph-openstack installed?"
    fi
    if ! (
        # openrc (stackrc and devstack's functions) is not nounset-clean.
        set +o nounset
        # shellcheck source=/dev/null
        source "$openrc" admin admin >/dev/null || exit 1
        exec "$command" telemetry-setup
    ); then
        die $LINENO "scaph-openstack telemetry-setup failed: Gnocchi lacks" \
            "the archive policies or resource types of the energy meters" \
            "(its output above)"
    fi
}

# Phases ------------------------------------------------------------------

function scaph_unstack {
    if is_service_enabled scaph-agent; then
        scaph_stop_agent
    fi
    scaph_unmount_shares
    scaph_unconfigure_nova
    scaph_unconfigure_ceilometer
}

function scaph_clean {
    scaph_unstack
    sudo rm -rf "$SCAPH_OPENSTACK_CONF_DIR" "$SCAPH_OPENSTACK_STATE_DIR" \
        "$SCAPH_OPENSTACK_RUN_DIR" "$SCAPH_OPENSTACK_WORK_DIR" \
        "$SCAPH_OPENSTACK_EXPORT_DIR"
}

if is_service_enabled scaph-agent scaph-nova; then
    if [[ "$1" == "stack" && "$2" == "pre-install" ]]; then
        if is_service_enabled scaph-nova; then
            # Fail before devstack spends its time installing everything.
            scaph_check_virt_driver
            if [[ "$SCAPH_OPENSTACK_INSTALL_VIRTIOFSD" == True ]]; then
                echo_summary "Installing virtiofsd for scaph-openstack"
                scaph_install_virtiofsd
            fi
        fi

    elif [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing scaph-openstack"
        setup_develop "$SCAPH_OPENSTACK_DIR"

    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        if is_service_enabled scaph-agent; then
            echo_summary "Configuring and starting scaph-openstack-agent"
            scaph_configure_agent
            scaph_start_agent
        fi
        if is_service_enabled scaph-nova; then
            echo_summary "Configuring Nova for scaph-openstack"
            scaph_configure_nova
        fi
        if is_service_enabled ceilometer-acompute ceilometer-anotification; then
            echo_summary "Configuring Ceilometer for scaph-openstack"
            scaph_configure_ceilometer
        fi

    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        if is_service_enabled ceilometer-acompute ceilometer-anotification; then
            scaph_configure_ceilometer
        fi

    elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
        if is_service_enabled gnocchi-api; then
            echo_summary "Creating Gnocchi's archive policies and resource" \
                "types for scaph-openstack"
            scaph_setup_gnocchi
        fi
    fi

    if [[ "$1" == "unstack" ]]; then
        scaph_unstack
    fi

    if [[ "$1" == "clean" ]]; then
        scaph_clean
    fi
fi

$XTRACE_SCAPH
