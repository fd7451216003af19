# bash completion for ovlfs(1)                             -*- shell-script -*-
#
# Standalone: uses only bash builtins, so it works with or without the
# bash-completion package (installed as completions/ovlfs, it is loaded on
# demand by bash-completion; otherwise source it from ~/.bashrc).

# Options per subcommand; "=" marks an option that takes a value.
_ovlfs_opts()
{
	case $1 in
	mount)
		echo "--upper= -u= --lower= --inode-mode= -i= -o= --format=" \
			"--read-only --no-passthrough --io-uring= --no-redirect-dir --no-metacopy --log= --foreground -f" \
			"--volatile --volatile-dirty= --debug -d --help -h" ;;
	run)
		echo "--upper= -u= --lower= --inode-mode= -i= -o= --format=" \
			"--into= --log= --no-passthrough --io-uring= --no-redirect-dir --no-metacopy --on-exit= --help -h" ;;
	diff)
		echo "--upper= -u= --lower= --into= --json --help -h" ;;
	commit)
		echo "--upper= -u= --lower= --into= --atomic" \
			"--quiet -q --help -h" ;;
	discard | recover)
		echo "--upper= -u= --lower= --into= --quiet -q --help -h" ;;
	flatten)
		echo "--upper= -u= --lower= --format= --help -h" ;;
	convert)
		echo "--to= --upper= -u= --lower= --help -h" ;;
	export)
		echo "--tar= --upper= -u= --help -h" ;;
	apply)
		echo "--tar= --commit --upper= -u= --help -h" ;;
	umount | help)
		echo "--help -h" ;;
	esac
}

_ovlfs_dirs()
{
	compopt -o filenames 2>/dev/null
	local IFS=$'\n'
	COMPREPLY+=($(compgen -d -- "$1"))
}

_ovlfs_files()
{
	compopt -o filenames 2>/dev/null
	local IFS=$'\n'
	COMPREPLY+=($(compgen -f -- "$1"))
}

_ovlfs()
{
	local commands="mount umount run diff commit discard recover flatten
		convert export apply help"
	local -a words=()
	local cword=0 i w cur prev cmd opts prefix="" o

	# bash splits "--lower a:b" and "--format=oci" at ':' and '='
	# (COMP_WORDBREAKS); glue those pieces back so that a value is one
	# word, as it is for ovlfs itself.
	for ((i = 0; i < ${#COMP_WORDS[@]}; i++)); do
		w=${COMP_WORDS[i]}
		if ((i > 0)) && [[ $w == [:=] || ${COMP_WORDS[i - 1]} == [:=] ]] &&
			[[ ${words[-1]} != -- ]] && ((${#words[@]} > 1)); then
			words[-1]+=$w
		else
			words+=("$w")
		fi
		((i == COMP_CWORD)) && cword=$((${#words[@]} - 1))
	done
	((i > COMP_CWORD)) || cword=${#words[@]}
	cur=${words[cword]}
	prev=${words[cword - 1]}
	COMPREPLY=()

	# Whatever of the glued word bash does not consider part of the word
	# being completed must come off the replies again.
	local strip=$((${#cur} - ${#COMP_WORDS[COMP_CWORD]}))

	if [[ $cur == --*=* ]]; then
		prev=${cur%%=*}
		prefix=$prev=
		cur=${cur#*=}
	fi

	if ((cword == 1)); then
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W "--help --version" -- "$cur"))
		else
			COMPREPLY=($(compgen -W "$commands" -- "$cur"))
		fi
		return 0
	fi

	cmd=${words[1]}
	case " $(echo $commands) " in
	*" $cmd "*) ;;
	*)
		# mount(8) syntax: ovlfs SOURCE MOUNTPOINT -o OPTS
		[[ $prev == -o ]] || _ovlfs_dirs "$cur"
		return 0 ;;
	esac

	# run: after "--" comes the command and its own arguments.
	if [[ $cmd == run ]]; then
		for ((i = 2; i < cword; i++)); do
			[[ ${words[i]} == -- ]] || continue
			if ((i + 1 == cword)); then
				# builtins and PATH entries repeat names
				COMPREPLY=($(compgen -c -- "$cur" | sort -u))
			else
				_ovlfs_files "$cur"
			fi
			return 0
		done
	fi

	case $prev in
	-u | --upper | --into)
		_ovlfs_dirs "$cur" ;;
	--lower)
		# A colon separated list: complete its last element.
		local head=""
		[[ $cur == *:* ]] && head=${cur%:*}:
		_ovlfs_dirs "${cur##*:}"
		prefix+=$head ;;
	-i | --inode-mode)
		COMPREPLY=($(compgen -W "virtual persistent" -- "$cur")) ;;
	--format | --to)
		COMPREPLY=($(compgen -W "oci kernel" -- "$cur")) ;;
	--volatile-dirty)
		COMPREPLY=($(compgen -W "refuse discard keep" -- "$cur")) ;;
	--io-uring)
		COMPREPLY=($(compgen -W "auto on off" -- "$cur")) ;;
	--on-exit)
		COMPREPLY=($(compgen -W "ask preserve discard commit
			commit-atomic" -- "$cur")) ;;
	--log | --tar)
		_ovlfs_files "$cur" ;;
	-o)
		;;
	*)
		if [[ $cur == -* ]]; then
			opts=$(_ovlfs_opts "$cmd")
			COMPREPLY=($(compgen -W "${opts//=/}" -- "$cur"))
			# A long option taking a value gets its '=' and no
			# space, so the value can follow at once.
			for o in $opts; do
				[[ $o == --*= && ${#COMPREPLY[@]} == 1 &&
					${COMPREPLY[0]} == "${o%=}" ]] || continue
				COMPREPLY=("$o")
				compopt -o nospace 2>/dev/null
			done
		elif [[ $cmd == help ]]; then
			((cword == 2)) &&
				COMPREPLY=($(compgen -W "$commands" -- "$cur"))
		else
			_ovlfs_dirs "$cur"
		fi ;;
	esac

	if [[ -n $prefix ]]; then
		COMPREPLY=("${COMPREPLY[@]/#/$prefix}")
	fi
	if ((strip > 0)); then
		for i in "${!COMPREPLY[@]}"; do
			COMPREPLY[i]=${COMPREPLY[i]:strip}
		done
	fi
	return 0
}

complete -F _ovlfs ovlfs
