"""Validators for the ``scaphandre:`` flavor extra spec namespace.

Loaded by nova-api through the ``nova.api.extra_spec_validators`` entry
point. Registering the namespace also makes Nova reject unknown
``scaphandre:*`` keys (a typo such as ``scaphandre:shares``) when flavor
extra specs are set with microversion 2.86 or later.
"""

from nova.api.validation.extra_specs import base

from scaph_openstack.conf import nova as scaph_conf

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=scaph_conf.FLAVOR_SPEC,
        description=(
            'Whether instances of this flavor get the read-only '
            'scaph-openstack energy share: a virtiofs filesystem (mount '
            'tag set by [scaphandre] tag in nova-compute\'s configuration) '
            'holding a powercap tree of the instance\'s own energy, which '
            'scaphandre --vm reads. It also gives the guest shared memory. '
            'Instances with the share cannot be live migrated nor '
            'suspended. Overrides the image property %s, which can ask '
            'for the share only where nova-compute sets [scaphandre] '
            'honor_image_property; whether it is needed depends on '
            '[scaphandre] attach (opt-in: true enables it; all: false '
            'disables it; none: ignored). Ignored for memory-encrypted '
            'instances (hw:mem_encryption), which never get the share.'
            % scaph_conf.IMAGE_PROPERTY
        ),
        value={
            'type': bool,
            'description': 'Whether the instance gets the share.',
        },
    ),
]


def register():
    return EXTRA_SPEC_VALIDATORS
