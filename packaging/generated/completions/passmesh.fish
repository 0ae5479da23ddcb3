# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_passmesh_global_optspecs
    string join \n socket= json h/help V/version
end

function __fish_passmesh_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_passmesh_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_passmesh_using_subcommand
    set -l cmd (__fish_passmesh_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c passmesh -n "__fish_passmesh_needs_command" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_needs_command" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_needs_command" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_needs_command" -s V -l version -d 'Print version'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "status" -d 'Show the daemon, vault, keystore and PIN state'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "list" -d 'List passkeys'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "show" -d 'Show one passkey (credential id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "delete" -d 'Delete one passkey (credential id, or a unique prefix of it): it moves to the trash on every device'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "rename" -d 'Label one passkey (credential id, or a unique prefix of it); the label syncs to every device'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "device" -d 'The vault\'s devices: list, rename, and remove a lost or stolen one'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "trash" -d 'Deleted passkeys: list, restore, purge'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "recovery" -d 'Recover after losing every device: the recovery phrase (setup, verify, rotate, identity)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "backup" -d 'Write a backup of the vault to FILE: an age file that opens with the recovery phrase only'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "restore" -d 'Restore a backup FILE on this device (its vault must be empty), with the recovery phrase (prompt, or stdin)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "audit" -d 'Show the vault\'s audit log: who paired, renamed or removed devices, rotated the key, deleted, restored or purged passkeys, and when; each entry is checked (signed by the device it names, unaltered)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "generate-docs" -d 'Write the man pages and shell completions (for packagers) into DIR/man and DIR/completions'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "pin" -d 'Manage the device PIN used for user verification'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "keystore" -d 'Manage the keystore that seals the vault\'s keys (works on the state directory; passmeshd must be stopped)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "pair" -d 'Invite a new device: shows a one-time pairing code (QR and URI) and waits until a device joins with it'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "join" -d 'Join the vault of another device with the pairing code it shows (`passmesh pair` there)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "create" -d 'Create a passkey from PublicKeyCredentialCreationOptionsJSON (for scripts and tests)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "get" -d 'Sign in with a passkey from PublicKeyCredentialRequestOptionsJSON (for scripts and tests)'
complete -c passmesh -n "__fish_passmesh_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand status" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand status" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand status" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand list" -l rp -d 'Only passkeys of this relying party id' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand list" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand list" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand list" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand show" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand show" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand show" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand delete" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand delete" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand rename" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand rename" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand rename" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and not __fish_seen_subcommand_from list rename remove help" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and not __fish_seen_subcommand_from list rename remove help" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and not __fish_seen_subcommand_from list rename remove help" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and not __fish_seen_subcommand_from list rename remove help" -f -a "list" -d 'List the vault\'s devices: id, name, this device, connected, last seen, added by and when, standing'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and not __fish_seen_subcommand_from list rename remove help" -f -a "rename" -d 'Rename a device (its id, or a unique prefix of it); the name syncs to every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and not __fish_seen_subcommand_from list rename remove help" -f -a "remove" -d 'Remove a lost or stolen device (its id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and not __fish_seen_subcommand_from list rename remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from list" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from rename" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from rename" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from rename" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from remove" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from remove" -l pin-stdin -d 'Read the PIN from the first line of stdin (needed when a PIN is set)'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from remove" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the vault\'s devices: id, name, this device, connected, last seen, added by and when, standing'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from help" -f -a "rename" -d 'Rename a device (its id, or a unique prefix of it); the name syncs to every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a lost or stolen device (its id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_using_subcommand device; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and not __fish_seen_subcommand_from list restore purge help" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and not __fish_seen_subcommand_from list restore purge help" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and not __fish_seen_subcommand_from list restore purge help" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and not __fish_seen_subcommand_from list restore purge help" -f -a "list" -d 'List the deleted passkeys, with when each is purged'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and not __fish_seen_subcommand_from list restore purge help" -f -a "restore" -d 'Take a deleted passkey out of the trash (credential id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and not __fish_seen_subcommand_from list restore purge help" -f -a "purge" -d 'Purge deleted passkeys for good: one (credential id, or a unique prefix of it), or the whole trash'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and not __fish_seen_subcommand_from list restore purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from list" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from restore" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from restore" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from restore" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from purge" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from purge" -l pin-stdin -d 'Read the PIN from the first line of stdin (needed when a PIN is set)'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from purge" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the deleted passkeys, with when each is purged'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from help" -f -a "restore" -d 'Take a deleted passkey out of the trash (credential id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Purge deleted passkeys for good: one (credential id, or a unique prefix of it), or the whole trash'
complete -c passmesh -n "__fish_passmesh_using_subcommand trash; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -f -a "setup" -d 'Make a recovery phrase: 24 words that, with a backup file, bring every passkey back after losing every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -f -a "verify" -d 'Check a recovery phrase against this vault without changing anything (phrase on a terminal prompt, or stdin)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -f -a "rotate" -d 'Replace the recovery phrase: a new phrase as with `setup`; the old one opens nothing made afterwards (backups made before stay readable with it: delete them)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -f -a "identity" -d 'Print the age identity of a recovery phrase (phrase on a prompt or stdin), to decrypt a backup with the standard `age` tool: `age -d -i identity.txt BACKUP.age`'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and not __fish_seen_subcommand_from setup verify rotate identity help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from setup" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from setup" -l pin-stdin -d 'Read the PIN from the first line of stdin (needed when a PIN is set)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from setup" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from setup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from verify" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from verify" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from rotate" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from rotate" -l pin-stdin -d 'Read the PIN from the first line of stdin (needed when a PIN is set)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from rotate" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from identity" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from identity" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from identity" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from help" -f -a "setup" -d 'Make a recovery phrase: 24 words that, with a backup file, bring every passkey back after losing every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Check a recovery phrase against this vault without changing anything (phrase on a terminal prompt, or stdin)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Replace the recovery phrase: a new phrase as with `setup`; the old one opens nothing made afterwards (backups made before stay readable with it: delete them)'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from help" -f -a "identity" -d 'Print the age identity of a recovery phrase (phrase on a prompt or stdin), to decrypt a backup with the standard `age` tool: `age -d -i identity.txt BACKUP.age`'
complete -c passmesh -n "__fish_passmesh_using_subcommand recovery; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand backup" -l out -d 'Where to write it (written whole, then renamed into place)' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand backup" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand backup" -l pin-stdin -d 'Read the PIN from the first line of stdin (needed when a PIN is set)'
complete -c passmesh -n "__fish_passmesh_using_subcommand backup" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand backup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand restore" -l name -d 'This device\'s name in the vault [default: the host name]' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand restore" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand restore" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand restore" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand audit" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand audit" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand audit" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand generate-docs" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand generate-docs" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand generate-docs" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and not __fish_seen_subcommand_from set help" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and not __fish_seen_subcommand_from set help" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and not __fish_seen_subcommand_from set help" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and not __fish_seen_subcommand_from set help" -f -a "set" -d 'Set or change the PIN (prompts on a terminal; otherwise reads lines from stdin: the current PIN first if one is set, then the new PIN)'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and not __fish_seen_subcommand_from set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and __fish_seen_subcommand_from set" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and __fish_seen_subcommand_from set" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and __fish_seen_subcommand_from help" -f -a "set" -d 'Set or change the PIN (prompts on a terminal; otherwise reads lines from stdin: the current PIN first if one is set, then the new PIN)'
complete -c passmesh -n "__fish_passmesh_using_subcommand pin; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -l state-dir -d 'passmeshd\'s state directory [default: $XDG_DATA_HOME/passmesh]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -l config -d 'passmeshd\'s TOML config file (for `[tpm]` and `state_dir`)' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -l tpm-tcti -d 'TCTI of the TPM [default: from the config, else device:/dev/tpmrm0]' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -l system -d 'The system service\'s state [default dir: /var/lib/passmesh]: every user\'s vault and the machine identity (run as its user, `sudo -u passmesh`, with passmesh.service stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -f -a "migrate" -d 'Move the vault\'s sealed keys to another keystore (run with passmeshd stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -f -a "reseal" -d 'Seal the vault\'s keys again with the TPM, bound to the configured PCRs or to --pcrs (run with passmeshd stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and not __fish_seen_subcommand_from migrate reseal help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -l to -d 'The keystore to move to: tpm or software' -r -f -a "tpm\t''
software\t''"
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -l state-dir -d 'passmeshd\'s state directory [default: $XDG_DATA_HOME/passmesh]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -l config -d 'passmeshd\'s TOML config file (for `[tpm]` and `state_dir`)' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -l tpm-tcti -d 'TCTI of the TPM [default: from the config, else device:/dev/tpmrm0]' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -l system -d 'The system service\'s state [default dir: /var/lib/passmesh]: every user\'s vault and the machine identity (run as its user, `sudo -u passmesh`, with passmesh.service stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -l pcrs -d 'PCRs to bind, e.g. 7,14, or `none`; default: `[tpm] pcrs` from the config' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -l state-dir -d 'passmeshd\'s state directory [default: $XDG_DATA_HOME/passmesh]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -l config -d 'passmeshd\'s TOML config file (for `[tpm]` and `state_dir`)' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -l tpm-tcti -d 'TCTI of the TPM [default: from the config, else device:/dev/tpmrm0]' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -l system -d 'The system service\'s state [default dir: /var/lib/passmesh]: every user\'s vault and the machine identity (run as its user, `sudo -u passmesh`, with passmesh.service stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from reseal" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from help" -f -a "migrate" -d 'Move the vault\'s sealed keys to another keystore (run with passmeshd stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from help" -f -a "reseal" -d 'Seal the vault\'s keys again with the TPM, bound to the configured PCRs or to --pcrs (run with passmeshd stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand keystore; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand pair" -l expires -d 'Seconds the code stays valid' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand pair" -l out -d 'Also write the QR code to FILE (.png or .svg)' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand pair" -l name -d 'This device\'s name as the new device will list it [default: its name in the vault]' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand pair" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand pair" -l confirm -d 'Ask before sending any key (always the case now; kept so that older scripts still run)'
complete -c passmesh -n "__fish_passmesh_using_subcommand pair" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand pair" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand join" -l image -d 'Read the code from a PNG image of its QR code (a screenshot or `passmesh pair --out`)' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand join" -l name -d 'This device\'s name in the vault [default: the host name]' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand join" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand join" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand join" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c passmesh -n "__fish_passmesh_using_subcommand create" -l origin -d 'The calling origin, e.g. https://login.example.com' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand create" -l options -d 'File with the options JSON, or - for stdin' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand create" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand create" -l pin-stdin -d 'Read the PIN from the first line of stdin'
complete -c passmesh -n "__fish_passmesh_using_subcommand create" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand create" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand get" -l origin -d 'The calling origin, e.g. https://login.example.com' -r
complete -c passmesh -n "__fish_passmesh_using_subcommand get" -l options -d 'File with the options JSON, or - for stdin' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand get" -l socket -d 'The daemon\'s socket [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock if it exists, else the system service\'s /run/passmesh/ipc.sock]' -r -F
complete -c passmesh -n "__fish_passmesh_using_subcommand get" -l pin-stdin -d 'Read the PIN from the first line of stdin'
complete -c passmesh -n "__fish_passmesh_using_subcommand get" -l json -d 'Print machine-readable JSON instead of text'
complete -c passmesh -n "__fish_passmesh_using_subcommand get" -s h -l help -d 'Print help'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "status" -d 'Show the daemon, vault, keystore and PIN state'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "list" -d 'List passkeys'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "show" -d 'Show one passkey (credential id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "delete" -d 'Delete one passkey (credential id, or a unique prefix of it): it moves to the trash on every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "rename" -d 'Label one passkey (credential id, or a unique prefix of it); the label syncs to every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "device" -d 'The vault\'s devices: list, rename, and remove a lost or stolen one'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "trash" -d 'Deleted passkeys: list, restore, purge'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "recovery" -d 'Recover after losing every device: the recovery phrase (setup, verify, rotate, identity)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "backup" -d 'Write a backup of the vault to FILE: an age file that opens with the recovery phrase only'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "restore" -d 'Restore a backup FILE on this device (its vault must be empty), with the recovery phrase (prompt, or stdin)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "audit" -d 'Show the vault\'s audit log: who paired, renamed or removed devices, rotated the key, deleted, restored or purged passkeys, and when; each entry is checked (signed by the device it names, unaltered)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "generate-docs" -d 'Write the man pages and shell completions (for packagers) into DIR/man and DIR/completions'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "pin" -d 'Manage the device PIN used for user verification'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "keystore" -d 'Manage the keystore that seals the vault\'s keys (works on the state directory; passmeshd must be stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "pair" -d 'Invite a new device: shows a one-time pairing code (QR and URI) and waits until a device joins with it'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "join" -d 'Join the vault of another device with the pairing code it shows (`passmesh pair` there)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "create" -d 'Create a passkey from PublicKeyCredentialCreationOptionsJSON (for scripts and tests)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "get" -d 'Sign in with a passkey from PublicKeyCredentialRequestOptionsJSON (for scripts and tests)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and not __fish_seen_subcommand_from status list show delete rename device trash recovery backup restore audit generate-docs pin keystore pair join create get help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from device" -f -a "list" -d 'List the vault\'s devices: id, name, this device, connected, last seen, added by and when, standing'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from device" -f -a "rename" -d 'Rename a device (its id, or a unique prefix of it); the name syncs to every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from device" -f -a "remove" -d 'Remove a lost or stolen device (its id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from trash" -f -a "list" -d 'List the deleted passkeys, with when each is purged'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from trash" -f -a "restore" -d 'Take a deleted passkey out of the trash (credential id, or a unique prefix of it)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from trash" -f -a "purge" -d 'Purge deleted passkeys for good: one (credential id, or a unique prefix of it), or the whole trash'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from recovery" -f -a "setup" -d 'Make a recovery phrase: 24 words that, with a backup file, bring every passkey back after losing every device'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from recovery" -f -a "verify" -d 'Check a recovery phrase against this vault without changing anything (phrase on a terminal prompt, or stdin)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from recovery" -f -a "rotate" -d 'Replace the recovery phrase: a new phrase as with `setup`; the old one opens nothing made afterwards (backups made before stay readable with it: delete them)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from recovery" -f -a "identity" -d 'Print the age identity of a recovery phrase (phrase on a prompt or stdin), to decrypt a backup with the standard `age` tool: `age -d -i identity.txt BACKUP.age`'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from pin" -f -a "set" -d 'Set or change the PIN (prompts on a terminal; otherwise reads lines from stdin: the current PIN first if one is set, then the new PIN)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from keystore" -f -a "migrate" -d 'Move the vault\'s sealed keys to another keystore (run with passmeshd stopped)'
complete -c passmesh -n "__fish_passmesh_using_subcommand help; and __fish_seen_subcommand_from keystore" -f -a "reseal" -d 'Seal the vault\'s keys again with the TPM, bound to the configured PCRs or to --pcrs (run with passmeshd stopped)'
