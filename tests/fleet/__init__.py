"""Fleet test hosts: network namespaces with sshd and a service under hotpatch run."""
